//! The `ferry` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use ferry::config::Config;
use ferry::metrics::Metrics;
use ferry::pg::conninfo::ConnInfo;
use ferry::pg::names::QualifiedName;
use ferry::tail::{self, TailOptions};
use ferry::validate;

/// ferry keeps microservices' private PostgreSQL databases in sync: it reads
/// logical replication (pgoutput) from service databases and applies the
/// changes each subscription selects to other services' databases.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format on standard error. RUST_LOG filters (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// See ferry at work in a minute: two services with their own throwaway
    /// PostgreSQL, kept in sync both ways, under a live workload.
    ///
    /// Starts two PostgreSQL clusters in a temporary folder (only the server
    /// binaries are needed: PG_BIN, `pg_config --bindir` or
    /// /usr/lib/postgresql/*/bin; as root they run as the `postgres` user).
    /// The customers service owns a `customers` table and the orders service
    /// an `orders` table; ferry keeps a copy of each in the other service's
    /// database, running in-process with a generated config (printed).
    ///
    /// A workload of new customers, new orders, status changes (pending →
    /// paid → shipped) and deletes runs at 20 transactions/s, with row counts
    /// printed every 2 seconds. On Ctrl-C, or after --seconds, the workload
    /// stops, the copies catch up (at most 60 s; a second Ctrl-C skips this)
    /// and each copy is compared with its source by row count and md5.
    /// Servers and folder are removed in every case.
    ///
    /// Exits 0 when every copy equals its source, 1 otherwise.
    #[command(after_help = "Example: ferry demo --seconds 30")]
    Demo {
        /// Stop after this many seconds instead of at Ctrl-C.
        #[arg(long, value_name = "N")]
        seconds: Option<u64>,
    },
    /// Run the daemon: every subscription in the config file as its own
    /// pipeline, until SIGTERM or SIGINT (which finish the transaction in
    /// hand, confirm it to the source and exit).
    ///
    /// SIGHUP re-reads the config file and applies it without a restart:
    /// new subscriptions start, changed ones restart (a table added to a
    /// subscription is copied while its other tables keep streaming),
    /// removed ones stop and keep their slot (see `ferry drop`), and
    /// pipelines that had stopped with an error start again. A config that
    /// does not load is reported and the running one kept.
    ///
    /// Serves /metrics (Prometheus), /healthz, /readyz and /status on
    /// [server] listen (default 127.0.0.1:9187); fails at start when that
    /// address cannot be bound.
    Run {
        /// The config file (TOML).
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
    },
    /// Remove what a subscription left on its source after it was taken out
    /// of the config: its slot, and the publication ferry made for it; with
    /// --target, also its bookkeeping on the target.
    ///
    /// Taking a subscription out of the config stops its pipeline but keeps
    /// its slot (a typo must not throw away the changes it holds); the slot
    /// keeps WAL on the source until this command drops it. Refuses while
    /// the subscription is still configured or its slot is in use. The
    /// config needs the subscription's source (and target, with --target), not the
    /// subscription; run again after a drop that stopped half way, it drops
    /// what is left.
    ///
    /// On the target, --target removes the subscription's rows in
    /// ferry.progress and ferry.tables and its replication origins, so that
    /// a subscription of that name can start afresh there (its tables'
    /// rows and its dead letters stay).
    #[command(after_help = "Example: ferry drop customers-to-orders --config ferry.toml --target orders")]
    Drop {
        /// The subscription's name, as it was in the config.
        subscription: String,
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
        /// The config's source the subscription read (needed when the config
        /// has several).
        #[arg(long)]
        source: Option<String>,
        /// The config's target the subscription wrote to, to remove its
        /// bookkeeping there too (left alone without it).
        #[arg(long)]
        target: Option<String>,
    },
    /// Check a config file and, unless --offline, every source and target it
    /// names: tables, keys, replica identity, publications, column types.
    /// Prints what each subscription would do, then the problems found.
    /// Exits with 1 when there is an error (warnings alone exit with 0).
    Validate {
        /// The config file (TOML).
        #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
        config: PathBuf,
        /// Check the config file only; connect to no database.
        #[arg(long)]
        offline: bool,
    },
    /// Print a running daemon's pipelines as a table: state, last applied
    /// LSN and commit time, lag, WAL held by the slot, and the last error.
    #[command(after_help = "Example: ferry status --url http://ferry.example.internal:9187")]
    Status {
        /// The daemon's HTTP address (its [server] listen).
        #[arg(long, env = "FERRY_STATUS_URL", default_value = "http://127.0.0.1:9187")]
        url: String,
        /// Print /status as the JSON it is instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a database's live changes as JSON lines (one per change) on
    /// standard output, until Ctrl-C.
    ///
    /// Creates a publication for the given tables and a temporary slot, both
    /// removed on exit (a second Ctrl-C exits at once and leaves the publication); with --slot, a permanent slot (and its publication)
    /// is created when missing and kept, so a later run continues where this
    /// one stopped.
    Tail {
        /// Source connection string, URL or key=value form as psql accepts
        /// (e.g. postgresql://user@host:5432/db?sslmode=verify-full). A
        /// password not in it is read from PGPASSWORD (a flag would show it
        /// to every user of the machine in the process list).
        #[arg(long, env = "FERRY_TAIL_SOURCE", hide_env_values = true)]
        source: String,
        /// A table to follow, SCHEMA.TABLE in SQL syntax (public."Order Lines"); repeatable.
        #[arg(long = "table", value_name = "SCHEMA.TABLE", required_unless_present = "publication")]
        tables: Vec<String>,
        /// Read an existing publication instead of --table.
        #[arg(long, conflicts_with = "tables")]
        publication: Option<String>,
        /// Use (and create if missing) this permanent slot instead of a temporary one
        /// (at most 52 bytes with --table: its publication is ferry_tail_SLOT;
        /// not starting with ferry_, the prefix of subscriptions' slots).
        #[arg(long)]
        slot: Option<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A token cancelled by the first SIGINT or SIGTERM.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping (a second SIGINT or SIGTERM exits at once)");
        trigger.cancel();
        // Someone who will not wait for the stop's grace periods: as if
        // killed, which loses nothing (what the target did not commit is
        // applied again at the next start).
        let code = tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
        };
        tracing::warn!("second signal: exiting at once, as if killed");
        std::process::exit(code);
    });
    token
}

async fn tail_command(
    source: String,
    tables: Vec<String>,
    publication: Option<String>,
    slot: Option<String>,
) -> anyhow::Result<()> {
    let mut source: ConnInfo = source.parse().context("bad --source")?;
    if source.password.is_none()
        && let Some(password) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty())
    {
        source = source.with_password(password.into());
    }
    let tables = tables.iter().map(|t| t.parse::<QualifiedName>()).collect::<Result<Vec<_>, _>>()?;
    let options = TailOptions { source, tables, publication, slot };
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    tail::run(options, stdout, shutdown_token()).await?;
    Ok(())
}

/// Tokens for the demo: the first SIGINT or SIGTERM cancels the first
/// (stop the workload, let the copies catch up, compare), the second cancels
/// the second (stop waiting). SIGHUP counts as well: a closed terminal
/// would otherwise kill the demo and leave its servers running.
fn demo_tokens() -> (CancellationToken, CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let (stop_trigger, abort_trigger) = (stop.clone(), abort.clone());
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
        for trigger in [stop_trigger, abort_trigger] {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hangup.recv() => output_to_nowhere(),
            }
            trigger.cancel();
        }
    });
    (stop, abort)
}

/// After a hang-up the terminal is gone and writing to it fails (EIO):
/// `println!` would panic before the demo cleaned up, and a second panic
/// while cleaning up would abort with the servers still running. What it
/// prints from here on goes to /dev/null instead.
fn output_to_nowhere() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: both descriptors are open; dup2 only makes `fd` refer
            // to /dev/null, which outlives nothing that reads `fd`.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

async fn demo_command(seconds: Option<u64>) -> anyhow::Result<()> {
    let (stop, abort) = demo_tokens();
    let consistent = ferry::demo::run(ferry::demo::DemoOptions { seconds }, stop, abort).await?;
    if !consistent {
        anyhow::bail!("the demo did not end consistent and clean (see above)");
    }
    Ok(())
}

/// Each SIGHUP re-reads the config file at `path` and hands on what it
/// holds when it is valid; `metrics` shows whether it was.
fn reload_on_sighup(path: PathBuf, metrics: Metrics) -> tokio::sync::mpsc::Receiver<Config> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // Installed before any pipeline starts: until then SIGHUP would end
    // the process.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("installing the SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
            let loaded = Config::load(&path);
            metrics.reloaded(loaded.is_ok());
            match loaded {
                Ok(config) => {
                    if tx.send(config).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!("the configuration did not load, keeping the running one: {error}")
                }
            }
        }
    });
    rx
}

async fn drop_command(
    subscription: String,
    config: PathBuf,
    source: Option<String>,
    target: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load_for_drop(&config)?;
    let dropped =
        ferry::teardown::drop_subscription(&config, &subscription, source.as_deref(), target.as_deref())
            .await?;
    if let Some(slot) = &dropped.slot {
        println!("dropped slot {slot} on source {}", dropped.source);
    }
    if let Some(publication) = dropped.publication {
        println!("dropped publication {publication} on source {}", dropped.source);
    }
    if dropped.slot.is_none() {
        let slot = ferry::config::slot_name(&subscription);
        println!("no slot {slot} on source {} (dropped before?)", dropped.source);
    }
    if let Some(cleared) = dropped.target {
        let on = &cleared.target;
        if cleared.is_empty() {
            println!("target {on} holds nothing of {subscription} (is it the one it wrote to?)");
        }
        if cleared.progress {
            println!("deleted the progress of {subscription} on target {on}");
        }
        if cleared.tables > 0 {
            println!("deleted {} table state(s) of {subscription} on target {on}", cleared.tables);
        }
        for origin in cleared.origins {
            println!("dropped replication origin {origin} on target {on}");
        }
    }
    Ok(())
}

async fn run_command(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let listener = ferry::server::bind(config.server.listen).await?;
    let listen = listener.local_addr().unwrap_or(config.server.listen);
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz and /status");
    let metrics = Metrics::new();
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(ferry::server::serve(listener, metrics.clone(), stop_server.clone()));
    let reloads = reload_on_sighup(path, metrics.clone());
    let failed = ferry::daemon::run_with(config, &metrics, reloads, shutdown_token()).await;
    stop_server.cancel();
    if let Ok(Err(error)) = server.await {
        tracing::error!("{error}");
    }
    if failed > 0 {
        anyhow::bail!("{failed} pipeline(s) stopped with an error (see above)");
    }
    tracing::info!("all pipelines stopped cleanly");
    Ok(())
}

async fn status_command(url: String, json: bool) -> anyhow::Result<()> {
    let report = ferry::status::fetch(&url).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", ferry::status::table(&report));
    }
    Ok(())
}

/// Prints the config's problems, or the plan with what the databases say.
async fn validate_command(config: PathBuf, offline: bool) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(error) => {
            for line in error.to_string().lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let report = if offline { validate::offline(&config) } else { validate::online(&config).await };
    print!("{report}");
    if report.has_errors() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run { config } => run_command(config).await,
        Command::Demo { seconds } => demo_command(seconds).await,
        Command::Validate { config, offline } => return validate_command(config, offline).await,
        Command::Status { url, json } => status_command(url, json).await,
        Command::Drop { subscription, config, source, target } => {
            drop_command(subscription, config, source, target).await
        }
        Command::Tail { source, tables, publication, slot } => {
            tail_command(source, tables, publication, slot).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", with_causes(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text
/// is already there: many errors name their cause in their own message.
fn with_causes(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
