use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use winflow::admin::{self, Readiness};
use winflow::controller::{self, Context, ControllerConfig};
use winflow::metrics::Metrics;
use winflow::telemetry::{self, LogFormat};

/// winflow: Apache Airflow tasks on Windows nodes as least-privileged Active Directory identities.
#[derive(Parser)]
#[command(name = "winflow", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers and the admin server (/metrics, /livez, /readyz).
    Run(RunArgs),
    /// Print winflow's CustomResourceDefinitions as YAML.
    Crds {
        /// Also print the upstream GMSACredentialSpec CRD, for clusters that lack it.
        #[arg(long)]
        with_gmsa: bool,
        /// Write each winflow CRD to DIR/<crd name>.yaml instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print, as YAML, every object the operator would create for the given resources (offline).
    Render {
        /// Files with WindowsTaskIdentity resources ("-" reads standard input).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace of resources that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WINFLOW_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the admin server.
    #[arg(long, env = "WINFLOW_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "WINFLOW_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, env = "WINFLOW_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Resources reconciled in parallel.
    #[arg(long, env = "WINFLOW_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Seconds between looks at a converged resource (reads only).
    #[arg(long, env = "WINFLOW_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Name of this replica in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "winflow")]
    instance: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds {
            with_gmsa,
            dir: Some(dir),
        } => write_crds(&dir, with_gmsa),
        Command::Crds { with_gmsa, dir: None } => {
            print!("{}", winflow::crdgen::winflow_crds_yaml());
            if with_gmsa {
                print!("---\n{}", winflow::api::gmsa::UPSTREAM_CRD_YAML);
            }
            ExitCode::SUCCESS
        }
        Command::Render { files, namespace } => render(&files, &namespace),
        Command::Run(args) => run(args),
    }
}

fn write_crds(dir: &std::path::Path, with_gmsa: bool) -> ExitCode {
    let mut files: Vec<(String, String)> = winflow::crdgen::winflow_crds()
        .iter()
        .map(|crd| (winflow::crdgen::crd_file_name(crd), winflow::crdgen::crd_yaml(crd)))
        .collect();
    if with_gmsa {
        files.push((
            "gmsacredentialspecs.windows.k8s.io.yaml".to_owned(),
            winflow::api::gmsa::UPSTREAM_CRD_YAML.to_owned(),
        ));
    }
    for (name, yaml) in files {
        if let Err(e) = std::fs::write(dir.join(&name), yaml) {
            eprintln!("winflow crds: cannot write {}: {e}", dir.join(name).display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn render(files: &[PathBuf], namespace: &str) -> ExitCode {
    let mut input = String::new();
    for file in files {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        };
        match text {
            Ok(text) => input.push_str(&format!("{text}\n---\n")),
            Err(e) => {
                eprintln!("winflow render: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    match winflow::render::render(&input, namespace) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("winflow render: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format, &args.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run_operator(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "winflow stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run_operator(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::default();
    let readiness = Readiness::default();
    let config = ControllerConfig {
        namespace: args.namespace,
        resync_period: Duration::from_secs(args.resync_seconds),
        concurrency: args.concurrency,
        instance: args.instance,
        ..ControllerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let admin = tokio::spawn(admin::serve(
        args.admin_addr,
        metrics.clone(),
        readiness.clone(),
        stopped(),
    ));
    let ctx = Arc::new(Context::new(client, metrics, config));
    let controllers = tokio::spawn(controller::run_all(ctx, readiness, stopped()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    controllers.await?;
    admin.await??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
