use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use winflow::admin::{self, Readiness};
use winflow::cluster::api_writes;
use winflow::controller::{self, Context, ControllerConfig};
use winflow::leader::{self, LeaseSettings};
use winflow::metrics::Metrics;
use winflow::telemetry::{self, LogFormat};
use winflow::token::{CaBundle, OidcSettings, RetryPolicy, TokenConfig};
use winflow::webhook::managed_certs::{CertKeeper, ManagedCerts};
use winflow::webhook::registration::{self, Endpoint, Registration};
use winflow::webhook::{self, WebhookSettings};

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
    Run(Box<RunArgs>),
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
    /// Directory with the webhook's tls.crt and tls.key (reloaded when they change); the
    /// admission webhook is served only when set.
    #[arg(long, env = "WINFLOW_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// Address of the admission webhook (HTTPS).
    #[arg(long, env = "WINFLOW_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// For local runs: register the webhook configurations with the API server, pointing at
    /// this URL (for example https://127.0.0.1:9443). In a cluster the chart renders them.
    #[arg(long, env = "WINFLOW_REGISTER_WEBHOOKS", value_name = "URL", requires = "cert_dir")]
    register_webhooks: Option<String>,
    /// PEM file of CA certificates: the webhook then requires a client certificate signed by
    /// one of them at the TLS handshake, for API servers configured to present one (an
    /// AdmissionConfiguration with a kubeconfig for the webhook). Read at start-up; winflow
    /// does not start when it holds no usable certificate.
    #[arg(long, env = "WINFLOW_WEBHOOK_CLIENT_CA", value_name = "FILE", requires = "cert_dir")]
    webhook_client_ca: Option<PathBuf>,
    /// failurePolicy of registered webhook configurations.
    #[arg(long, value_parser = ["Fail", "Ignore"], default_value = "Fail")]
    webhook_failure_policy: String,
    /// Name of this replica in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "winflow")]
    instance: String,
    /// Accept `http://` OIDC issuers on loopback addresses. For local development and tests
    /// only: tokens and client secrets would cross the network unencrypted otherwise.
    #[arg(long, env = "WINFLOW_ALLOW_INSECURE_LOOPBACK_ISSUERS")]
    allow_insecure_loopback_issuers: bool,
    /// PEM file of CA certificates trusted for OIDC issuers (discovery, keys and token
    /// endpoint) in addition to the public roots: for providers behind a private CA. Read at
    /// start-up; winflow does not start when it holds no usable certificate.
    #[arg(long, env = "WINFLOW_OIDC_CA_FILE", value_name = "FILE")]
    oidc_ca_file: Option<PathBuf>,
    /// First wait after a failed token refresh; it doubles with each failure in a row.
    #[arg(long, env = "WINFLOW_TOKEN_RETRY_FIRST", value_parser = duration, default_value = "5s")]
    token_retry_first: Duration,
    /// Longest wait between token refresh attempts.
    #[arg(long, env = "WINFLOW_TOKEN_RETRY_MAX", value_parser = duration, default_value = "2m")]
    token_retry_max: Duration,
    /// Token attempts in flight at once, over all OIDC issuers.
    #[arg(long, env = "WINFLOW_TOKEN_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 8)]
    token_concurrency: u16,
    /// Token attempts in flight at once to one issuer: keep it below --token-concurrency, so
    /// that an issuer that never answers leaves slots to the others.
    #[arg(long, env = "WINFLOW_TOKEN_CONCURRENCY_PER_ISSUER", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 4)]
    token_concurrency_per_issuer: u16,
    /// How long one token attempt (service account token, discovery and token request
    /// together) may take before it is given up as DeadlineExceeded.
    #[arg(long, env = "WINFLOW_TOKEN_ATTEMPT_DEADLINE", value_parser = duration, default_value = "20s")]
    token_attempt_deadline: Duration,
    /// How long an issuer's discovery document is used before it is fetched again (it is
    /// also fetched again after the provider could not be reached).
    #[arg(long, env = "WINFLOW_OIDC_REDISCOVER_AFTER", value_parser = duration, default_value = "1h")]
    oidc_rediscover_after: Duration,
    /// Reconcile only while holding the leader Lease (for several replicas; every replica
    /// serves the webhook).
    #[arg(long, env = "WINFLOW_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "WINFLOW_LEASE_NAME", default_value = "winflow")]
    lease_name: String,
    /// The operator's own namespace, where the leader Lease and the managed webhook
    /// certificate Secret are (from the downward API in a pod).
    #[arg(long, env = "POD_NAMESPACE", alias = "lease-namespace")]
    operator_namespace: Option<String>,
    /// After SIGTERM, how long the webhook keeps answering (reported not ready) before it
    /// stops, while the API server and the nodes' proxies learn that this replica is gone;
    /// reconciling stops at once. Keep it below the pod's termination grace period.
    #[arg(long, env = "WINFLOW_SHUTDOWN_DELAY", value_parser = duration, default_value = "5s")]
    shutdown_delay: Duration,
    /// How long a leader's lease lasts without renewal; a new leader takes over within it.
    #[arg(long, env = "WINFLOW_LEASE_DURATION", value_parser = duration, default_value = "15s")]
    lease_duration: Duration,
    /// Keep the webhook's TLS certificate without cert-manager: a self-signed CA and serving
    /// certificate in a Secret, written to --cert-dir, the CA patched into the webhook
    /// configurations, renewed before expiry.
    #[arg(long, env = "WINFLOW_MANAGE_WEBHOOK_CERTS", requires = "cert_dir")]
    manage_webhook_certs: bool,
    /// Secret (in the operator's namespace) holding the managed CA and certificate.
    #[arg(long, env = "WINFLOW_WEBHOOK_CERT_SECRET", default_value = "winflow-webhook-certs")]
    webhook_cert_secret: String,
    /// Service the API server calls the webhook through (the certificate is for its DNS names).
    #[arg(long, env = "WINFLOW_WEBHOOK_SERVICE", default_value = "winflow-webhook")]
    webhook_service: String,
    /// Name of the mutating and the validating webhook configuration whose caBundle is kept.
    #[arg(long, env = "WINFLOW_WEBHOOK_CONFIGURATION", default_value = "winflow")]
    webhook_configuration: String,
}

/// A positive duration such as `30s`, `5m` or `1h`.
fn duration(text: &str) -> Result<Duration, String> {
    winflow::validate::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a positive duration (for example 30s, 5m, 1h)"))
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
        Command::Run(args) => run(*args),
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
    // Before anything else: a bad bundle is a configuration error to report at once, not a
    // token failure on every identity later.
    let oidc_ca = match &args.oidc_ca_file {
        None => None,
        Some(path) => {
            let bundle = CaBundle::from_pem_file(path)?;
            tracing::info!(
                file = %path.display(),
                certificates = bundle.len(),
                "OIDC issuers are trusted with the CA certificates of --oidc-ca-file as well as the public roots"
            );
            Some(bundle)
        }
    };
    let webhook_client_ca = match &args.webhook_client_ca {
        None => None,
        Some(path) => {
            let bundle =
                CaBundle::from_pem_file_of("--webhook-client-ca", "for the API server's client certificate", path)?;
            tracing::info!(
                file = %path.display(),
                certificates = bundle.len(),
                "the webhook requires a client certificate signed by a CA of --webhook-client-ca"
            );
            Some(bundle)
        }
    };
    let metrics = Metrics::default();
    let client = api_writes::infer_client(&metrics).await?;
    let webhook_parts = usize::from(args.cert_dir.is_some());
    let election = match (args.leader_elect, &args.operator_namespace) {
        (false, _) => None,
        (true, Some(namespace)) => Some(LeaseSettings {
            namespace: namespace.clone(),
            name: args.lease_name.clone(),
            identity: args.instance.clone(),
            duration: args.lease_duration,
        }),
        (true, None) => {
            return Err(
                "--leader-elect needs the operator's namespace: set --operator-namespace or POD_NAMESPACE".into(),
            );
        }
    };
    // With leader election, readiness means "serving": the webhook (on every replica) and
    // having joined the election. Followers must be ready to take webhook traffic, so the
    // leader's controller caches are not part of it (the winflow_leader metric tells).
    let controller_parts = if election.is_some() {
        1
    } else {
        controller::READINESS_PARTS
    };
    let readiness = Readiness::expecting(controller_parts + webhook_parts);
    let config = ControllerConfig {
        namespace: args.namespace.clone(),
        resync_period: Duration::from_secs(args.resync_seconds),
        concurrency: args.concurrency,
        instance: args.instance.clone(),
        token: TokenConfig {
            oidc: OidcSettings {
                allow_insecure_loopback: args.allow_insecure_loopback_issuers,
                rediscover_after: args.oidc_rediscover_after,
                ca_bundle: oidc_ca,
                attempt_deadline: args.token_attempt_deadline,
                concurrency: usize::from(args.token_concurrency),
                concurrency_per_issuer: usize::from(args.token_concurrency_per_issuer),
            },
            retry: RetryPolicy {
                first: args.token_retry_first,
                max: args.token_retry_max.max(args.token_retry_first),
            },
        },
        ..ControllerConfig::default()
    };
    // Two stages of shutdown: reconciling (and the Lease) stops at once, so another replica
    // takes over without waiting; the webhook and admin server stop `--shutdown-delay` later,
    // so that reviews the API server still routes here meanwhile are answered.
    let (stop_tx, stop) = Stop::new();
    let (stop_leading_tx, leading) = Stop::new();
    let webhook = match &args.cert_dir {
        Some(cert_dir) => {
            if args.manage_webhook_certs {
                let Some(namespace) = args.operator_namespace.clone() else {
                    return Err(
                        "--manage-webhook-certs needs the operator's namespace: set --operator-namespace or POD_NAMESPACE"
                            .into(),
                    );
                };
                let settings = ManagedCerts {
                    namespace,
                    secret_name: args.webhook_cert_secret.clone(),
                    service: args.webhook_service.clone(),
                    configuration: args.webhook_configuration.clone(),
                    cert_dir: cert_dir.clone(),
                    check_every: Duration::from_secs(300),
                };
                // Before serving: the HTTPS server starts only with a certificate.
                let mut keeper = CertKeeper::new(client.clone(), settings);
                keeper.ensure().await?;
                tokio::spawn(keeper.keep(stop.stopped()));
            }
            let settings = WebhookSettings {
                addr: args.webhook_addr,
                cert_dir: cert_dir.clone(),
                reload_interval: Duration::from_secs(5),
                namespace: args.namespace.clone(),
                instance: args.instance.clone(),
                client_ca: webhook_client_ca,
            };
            let (_, task) = webhook::start(
                client.clone(),
                settings,
                metrics.clone(),
                readiness.clone(),
                stop.stopped(),
            )
            .await?;
            if let Some(url) = &args.register_webhooks {
                // The server says whether it evaluates matchConditions (1.28 and later).
                let match_conditions = registration::supports_match_conditions(&client).await?;
                webhook::register(
                    client.clone(),
                    &local_registration(url, cert_dir, &args.webhook_failure_policy, match_conditions)?,
                )
                .await?;
                tracing::info!(%url, match_conditions, "registered the webhook configurations");
            }
            Some(task)
        }
        None => {
            tracing::warn!(
                "no --cert-dir: the admission webhook is not served, so pods are not checked against their identities"
            );
            None
        }
    };
    let admin = tokio::spawn(admin::serve(
        args.admin_addr,
        metrics.clone(),
        readiness.clone(),
        stop.stopped(),
    ));
    let controllers = match election {
        None => {
            let ctx = Arc::new(Context::new(client, metrics, config));
            tokio::spawn(controller::run_all(ctx, readiness.clone(), leading.stopped()))
        }
        Some(settings) => {
            let lead = {
                let (client, metrics) = (client.clone(), metrics.clone());
                move |stop: tokio::sync::oneshot::Receiver<()>| {
                    // A fresh context per term: nothing is carried over from a lost term.
                    let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), config.clone()));
                    let caches = Readiness::expecting(controller::READINESS_PARTS);
                    controller::run_all(ctx, caches, async move {
                        let _ = stop.await;
                    })
                }
            };
            tokio::spawn(leader::run(
                client,
                settings,
                metrics,
                readiness.clone(),
                leading.stopped(),
                lead,
            ))
        }
    };
    shutdown_signal().await;
    // A terminating pod leaves the webhook Service's endpoints at once, but the nodes'
    // proxies and the API server may route to it a moment longer; refusing then would fail
    // a pod create (failurePolicy Fail). A second signal skips the wait.
    tracing::info!(
        reconciling = "stops now",
        webhook_answers_for = ?args.shutdown_delay,
        "shutting down"
    );
    readiness.set_shutting_down();
    let _ = stop_leading_tx.send(true);
    tokio::select! {
        () = tokio::time::sleep(args.shutdown_delay) => {},
        () = shutdown_signal() => {},
    }
    let _ = stop_tx.send(true);
    controllers.await?;
    if let Some(webhook) = webhook {
        webhook.await?;
    }
    admin.await??;
    Ok(())
}

/// Webhook configurations for a local run: the API server calls `url`, trusting the CA in
/// `ca.crt` of the certificate directory (or the self-signed `tls.crt`).
fn local_registration(
    url: &str,
    cert_dir: &std::path::Path,
    failure_policy: &str,
    match_conditions: bool,
) -> std::io::Result<Registration> {
    let ca_bundle = std::fs::read(cert_dir.join("ca.crt")).or_else(|_| std::fs::read(cert_dir.join("tls.crt")))?;
    Ok(Registration {
        name: "winflow".to_owned(),
        endpoint: Endpoint::Url(url.to_owned()),
        ca_bundle,
        failure_policy: failure_policy.to_owned(),
        namespace_selector: None,
        match_conditions,
    })
}

/// A stop flag shared by the tasks that end with it.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// The flag's sender (send `true` to stop) and the flag.
    fn new() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stop(rx))
    }

    /// Completes once the flag is raised.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
