//! The tables the bench prints from its report.

use serde_json::Value;

use crate::{CLIENT_CONCURRENCY, MIB};

pub fn print_writes(title: &str, writes: &[Value]) {
    println!("{title}");
    if writes.is_empty() {
        println!("    (none)");
    }
    for w in writes {
        println!(
            "    {:<22} {:<13} {:>7}",
            w["kind"].as_str().unwrap(),
            w["verb"].as_str().unwrap(),
            w["writes"]
        );
    }
}

pub fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

pub fn print_report(report: &Value) {
    println!("\nrelease binary: {:.1} MiB", f(&report["binary_bytes"]) / MIB);
    println!("\nconvergence (N identities created at once, {CLIENT_CONCURRENCY} creates in flight)");
    println!(
        "{:>6} {:>5} {:>9} {:>7} {:>8} {:>9} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "N",
        "conc",
        "raw w/s",
        "min w",
        "create s",
        "Ready s",
        "floor s",
        "ratio",
        "writes/N",
        "evts/N",
        "recs/N",
        "RSS MiB"
    );
    for row in report["convergence"].as_array().unwrap() {
        println!(
            "{:>6} {:>5} {:>9.0} {:>7} {:>8.2} {:>9.2} {:>8.2} {:>7.2} {:>8.2} {:>7.2} {:>7.2} {:>7.1}",
            row["identities"].to_string(),
            row["concurrency"].to_string(),
            f(&row["raw_writes_per_second"]),
            row["minimal_writes_per_identity"].to_string(),
            f(&row["create_seconds"]),
            f(&row["converge_seconds"]),
            f(&row["floor_seconds"]),
            f(&row["ratio"]),
            f(&row["writes_per_identity"]),
            f(&row["events_per_identity"]),
            f(&row["reconciles_per_identity"]),
            f(&row["rss_mib"]),
        );
    }
    println!("    ratio = Ready s / floor s, floor = N x min w / raw w/s (target <= 1.3 at N = 1000)");
    println!("\nconvergence next to the minimal writes alone (the bench writes what a converge needs, nothing else)");
    println!(
        "{:>6} {:>5} {:>9} {:>9} {:>13} {:>13}",
        "N", "conc", "Ready s", "minimal s", "minimal/floor", "Ready/minimal"
    );
    for row in report["convergence"].as_array().unwrap() {
        println!(
            "{:>6} {:>5} {:>9.2} {:>9.2} {:>13.2} {:>13.2}",
            row["identities"].to_string(),
            row["concurrency"].to_string(),
            f(&row["converge_seconds"]),
            f(&row["ideal_operator_seconds"]),
            f(&row["ideal_operator_ratio"]),
            f(&row["winflow_over_ideal_operator"]),
        );
    }
    println!("\nconvergence: where the time goes (CPU seconds from first create until the operator settled)");
    println!(
        "{:>6} {:>5} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "N",
        "conc",
        "recs/N@R",
        "rec ms",
        "srv rd/N",
        "srv w/N",
        "cpu/raw",
        "cpu/ident",
        "ident=raw",
        "apisrv s",
        "etcd s",
        "op s"
    );
    for row in report["convergence"].as_array().unwrap() {
        let cpu = &row["cpu_seconds"];
        println!(
            "{:>6} {:>5} {:>8.2} {:>8.1} {:>9.1} {:>8.1} {:>8.2} {:>9.2} {:>9.1} {:>8.1} {:>8.1} {:>8.1}",
            row["identities"].to_string(),
            row["concurrency"].to_string(),
            f(&row["reconciles_per_identity_at_ready"]),
            f(&row["mean_reconcile_ms"]),
            f(&row["api_reads_per_identity"]),
            f(&row["api_writes_per_identity"]),
            f(&row["server_cpu_ms_per_raw_write"]),
            f(&row["server_cpu_ms_per_identity"]),
            f(&row["identity_cost_in_raw_writes"]),
            f(&cpu["kube-apiserver"]),
            f(&cpu["etcd"]),
            f(&cpu["winflow"]),
        );
        let to_ready = &row["cpu_seconds_to_ready"];
        let wall = f(&to_ready["wall"]);
        let busy = |c: &Value| -> f64 {
            let components = c.as_object().unwrap().iter();
            components
                .filter(|(k, _)| !matches!(k.as_str(), "wall" | "api_server_and_etcd"))
                .map(|(_, v)| f(v))
                .sum()
        };
        println!(
            "{:>12} until Ready: CPU busy {:.2} of 2 cores (API server {:.2}, etcd {:.2}, winflow {:.2}, controller-manager {:.2}, other processes {:.2}); {} reconcile errors",
            "",
            busy(to_ready) / wall,
            f(&to_ready["kube-apiserver"]) / wall,
            f(&to_ready["etcd"]) / wall,
            f(&to_ready["winflow"]) / wall,
            f(&to_ready["kube-controller"]) / wall,
            f(&to_ready["other"]) / wall,
            row["reconcile_errors"]
        );
        if let Some(teardown) = row["teardown_seconds"].as_f64() {
            println!(
                "{:>12} namespace deleted in {teardown:.1} s, {} identity reconciles failed meanwhile",
                "", row["teardown_reconcile_errors"]
            );
        }
        println!(
            "{:>12} raw rates with {} writers: create {:.0}/s, apply {:.0}/s, GET {:.0}/s; model N x (min w / apply + GETs/N / GET) = {:.1} s (other processes {:.2} cores during the raw writes)",
            "",
            row["concurrency"],
            f(&row["raw_writes_per_second"]),
            f(&row["raw_applies_per_second"]),
            f(&row["raw_gets_per_second"]),
            f(&row["model_seconds"]),
            f(&row["raw_cpu_seconds"]["other"]) / f(&row["raw_cpu_seconds"]["wall"]),
        );
    }
    println!(
        "    recs/N@R: identity reconciles per identity when all were Ready; rec ms: mean reconcile; srv rd/N, srv w/N:\n    API server reads (GET, LIST) and writes (all clients, the controller-manager included) per identity;\n    cpu/raw, cpu/ident: API server + etcd CPU ms per raw write and per identity; ident=raw: their ratio"
    );

    let economy = &report["write_economy"];
    let n = economy["identities"].as_u64().unwrap_or(1);
    println!(
        "\nwrite economy ({n} identities, --concurrency {})",
        economy["concurrency"]
    );
    print_writes(
        "  converge, by kind and verb (target: children + one status write per identity):",
        economy["converge_writes"].as_array().unwrap(),
    );
    let restart = &economy["restart"];
    println!(
        "  restart: Ready after {:.2} s, all {} reconciled after {:.2} s ({} reconciles), {} writes (target 0), {} Events",
        f(&restart["ready_seconds"]),
        n,
        f(&restart["all_reconciled_seconds"]),
        restart["reconciles"],
        restart["writes_total"],
        restart["events"]
    );
    print_writes("  restart writes:", restart["writes"].as_array().unwrap());
    println!(
        "  restart: {:.1} API server reads per identity, mean reconcile {:.1} ms, RSS {:.1} MiB (peak {:.1})",
        f(&restart["api_reads_per_identity"]),
        f(&restart["mean_reconcile_ms"]),
        f(&restart["rss_mib"]),
        f(&restart["peak_rss_mib"])
    );
    let burst = &economy["pod_burst"];
    println!(
        "  pods of {}: {} created in {:.2} s -> {} status writes ({} reconciles)",
        burst["identity"].as_str().unwrap_or_default(),
        burst["pods"],
        f(&burst["create_seconds"]),
        burst["create_status_writes"],
        burst["create_reconciles"]
    );
    println!(
        "  status burst: {} pod status updates in {:.2} s ({:.0}/s), settled {:.2} s later -> {} identity status writes (target: a handful), {} Events, {} reconciles",
        burst["updates"],
        f(&burst["burst_seconds"]),
        f(&burst["updates_per_second"]),
        f(&burst["settled_after_burst_seconds"]),
        burst["burst_status_writes"],
        burst["burst_events"],
        burst["burst_reconciles"]
    );
    print_writes("  burst writes:", burst["burst_writes"].as_array().unwrap());
    println!(
        "  sustained: {} updates spread over {:.1} s -> {} identity status writes, {} Events, {} reconciles",
        burst["updates"],
        f(&burst["sustained_seconds"]),
        burst["sustained_status_writes"],
        burst["sustained_events"],
        burst["sustained_reconciles"]
    );

    let memory = &report["memory"];
    println!("\nmemory (operator RSS; target <= 50 MiB)");
    let line = |what: &str, m: &Value| {
        println!(
            "  {what:<34} RSS {:>6.1} MiB (heap {:>5.1}, binary pages {:>4.1}), peak {:>6.1} MiB",
            f(&m["rss_mib"]),
            f(&m["anon_rss_mib"]),
            f(&m["file_rss_mib"]),
            f(&m["peak_rss_mib"])
        )
    };
    line("idle, 0 identities:", &report["idle"]);
    let economy = &report["write_economy"];
    line(
        &format!("{} identities (restarted):", economy["identities"]),
        &economy["restart"],
    );
    line(
        &format!(
            "{} identities, {} labelled pods:",
            memory["identities"], memory["labelled_pods"]
        ),
        memory,
    );
    println!(
        "  pods created in {:.1} s, settled {:.1} s later, {} identity status writes",
        f(&memory["create_seconds"]),
        f(&memory["settled_after_create_seconds"]),
        memory["status_writes"]
    );

    let hung = &report["hung_issuer"];
    println!(
        "\nnext to a hung OIDC issuer ({} identities on an issuer that accepts and never answers; --concurrency {}, --token-concurrency {}, per issuer {}, deadline {})",
        hung["hung_identities"],
        hung["concurrency"],
        hung["token_concurrency"],
        hung["token_concurrency_per_issuer"],
        hung["token_attempt_deadline"].as_str().unwrap_or_default()
    );
    println!(
        "  {} plain identities Ready: alone {:.2} s, beside the hung issuer's identities {:.2} s, alone again (those deleted) {:.2} s",
        hung["plain_identities"],
        f(&hung["alone_ready_seconds"]),
        f(&hung["beside_hung_ready_seconds"]),
        f(&hung["alone_again_ready_seconds"])
    );
    println!("  ratio beside / faster alone: {:.2} (target 1)", f(&hung["ratio"]));
    println!(
        "  meanwhile the hung issuer had accepted {} connections ({} when the plain ones were created) and {} of its identities had an outcome (0: all still pending)",
        hung["hung_connections_at_ready"], hung["hung_connections_before"], hung["hung_outcomes_at_ready"]
    );
}
