//! The `vsync` binary: command line, logging, exit codes, and the composition root that wires
//! configuration into the engine crates.
//!
//! Exit codes (DESIGN section 7): 0 ok, 1 fatal error or failed check, 2 usage or config error,
//! 3 a `--once` cycle that completed with per-secret failures.

mod setup;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing::{error, info};
use vsync_config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "vsync", version, about = "Replicates secrets one way from an origin Vault to destination Vaults")]
struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, default_value = "vsync.toml")]
    config: PathBuf,
    /// Log format (overrides telemetry.log_format).
    #[arg(long, global = true, value_parser = ["human", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the origin and every destination in one process, sharing one origin scan.
    Run {
        /// Directory of extra plugin components (not built yet).
        #[arg(long)]
        plugins: Option<PathBuf>,
        #[command(flatten)]
        cycle: CycleArgs,
    },
    /// Run the origin role: scan and publish the origin sync info (not built yet).
    Origin {
        /// Run one cycle and exit.
        #[arg(long)]
        once: bool,
    },
    /// Run one destination role (not built yet).
    Destination {
        /// Destination name from the config.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        cycle: CycleArgs,
    },
    /// Dry run: what a cycle of destination NAME would add, update and delete.
    Plan {
        /// Destination name from the config.
        #[arg(long)]
        name: String,
    },
    /// Check connectivity, auth, permissions, mounts and state stores (not built yet).
    Check,
    /// Check the config (and the plugins it names) offline.
    Validate,
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Show the last cycle per role from the state store (not built yet).
    Status,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load every component in DIR, run its test vectors, enforce limits (not built yet).
    Validate {
        /// Directory of components.
        dir: PathBuf,
        /// Output format.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
}

#[derive(Debug, Args)]
struct CycleArgs {
    /// Run one cycle and exit (exit 3 if some secrets failed).
    #[arg(long)]
    once: bool,
    /// Let one cycle delete more than max_delete_ratio of the destination's secrets.
    #[arg(long)]
    allow_mass_delete: bool,
    /// Accept a re-created origin mount (new UUID) for one cycle.
    #[arg(long)]
    allow_origin_change: bool,
}

/// Failure classes, mapped to exit codes.
enum Failure {
    Config(anyhow::Error),
    Fatal(anyhow::Error),
    NotBuilt(&'static str),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => Some(c),
        Err(e) => {
            // `plugin validate` works without a config file.
            if matches!(cli.command, Command::Plugin { .. }) {
                None
            } else {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    init_logging(cli.log_format.as_deref(), config.as_ref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli, config)) {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Fatal(e)) => {
            error!("fatal: {e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::NotBuilt(what)) => {
            eprintln!("error: `vsync {what}` is not built yet");
            ExitCode::from(2)
        }
    }
}

fn init_logging(flag: Option<&str>, config: Option<&Config>) {
    use std::io::IsTerminal;
    let json = match flag {
        Some(f) => f == "json",
        None => match config.and_then(|c| c.telemetry.log_format) {
            Some(f) => f == LogFormat::Json,
            None => !std::io::stderr().is_terminal() && std::env::var_os("VSYNC_LOG_JSON").is_some(),
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cli: Cli, config: Option<Config>) -> Result<ExitCode, Failure> {
    let Some(config) = config else {
        return match cli.command {
            Command::Plugin { .. } => Err(Failure::NotBuilt("plugin validate")),
            _ => Err(Failure::Config(anyhow::anyhow!("no configuration"))),
        };
    };
    match cli.command {
        Command::Run { plugins, cycle } => {
            if plugins.is_some() {
                return Err(Failure::NotBuilt("run --plugins"));
            }
            run(&config, &cycle).await
        }
        Command::Plan { name } => plan(&config, &name).await,
        Command::Validate => validate(&config),
        Command::Origin { .. } => Err(Failure::NotBuilt("origin")),
        Command::Destination { .. } => Err(Failure::NotBuilt("destination")),
        Command::Check => Err(Failure::NotBuilt("check")),
        Command::Status => Err(Failure::NotBuilt("status")),
        Command::Plugin { .. } => Err(Failure::NotBuilt("plugin validate")),
    }
}

fn validate(config: &Config) -> Result<ExitCode, Failure> {
    for d in &config.destinations {
        if !d.transforms.is_empty() || !d.filters.is_empty() {
            return Err(Failure::Config(anyhow::anyhow!(
                "destination `{}`: transforms and filters need the plugin host, which is not built yet",
                d.name
            )));
        }
        if d.versions == vsync_config::VersionsMode::All {
            return Err(Failure::Config(anyhow::anyhow!(
                "destination `{}`: versions = \"all\" is not built yet; set versions = \"latest\"",
                d.name
            )));
        }
    }
    println!(
        "config OK: origin with {} mount(s), {} destination(s)",
        config.origin.mounts.len(),
        config.destinations.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn plan(config: &Config, name: &str) -> Result<ExitCode, Failure> {
    let d = config
        .destination(name)
        .ok_or_else(|| Failure::Config(anyhow::anyhow!("no destination named `{name}` in the config")))?;
    let origin = setup::vault_client("origin", &config.origin.vault).map_err(Failure::Config)?;
    let store = setup::file_store(&format!("destination {name}"), &d.state).map_err(Failure::Config)?;
    let scan = sync::scan_origin(&origin, &config.origin.mounts, config.origin.workers)
        .await
        .map_err(Failure::Fatal)?;
    let state = sync::load_doc(&store, name)
        .map_err(Failure::Fatal)?
        .map(|doc| doc.entries.into_iter().map(|e| (e.key, e.entry)).collect())
        .unwrap_or_default();
    let plan = sync::plan_for(d, &scan, &state).map_err(Failure::Config)?;
    for action in plan.writes.iter().chain(plan.removals.iter()) {
        use vsync_core::Action;
        match action {
            Action::CopyV2 { key, version, target, reason } => {
                println!("copy   {key} v{version} -> {target} ({reason:?})")
            }
            Action::SyncV1 { key, target } => println!("check  {key} -> {target} (kv1)"),
            Action::Delete { target, .. } => println!("delete {target}"),
            Action::SoftDelete { target, .. } => println!("soft-delete {target}"),
            Action::Forget { key } => println!("forget {key}"),
        }
    }
    println!(
        "plan for `{name}`: {} write(s), {} removal(s), {} unchanged",
        plan.writes.len(),
        plan.removals.len(),
        plan.unchanged
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(config: &Config, args: &CycleArgs) -> Result<ExitCode, Failure> {
    if config.destinations.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!("`vsync run` needs at least one [[destination]]")));
    }
    let origin = setup::vault_client("origin", &config.origin.vault).map_err(Failure::Config)?;
    let mut dests = Vec::new();
    for d in &config.destinations {
        let side = format!("destination {}", d.name);
        let client = setup::vault_client(&side, &d.vault).map_err(Failure::Config)?;
        let store = setup::file_store(&side, &d.state).map_err(Failure::Config)?;
        let lock = store
            .lock_side(&sync::side_name(&d.name))
            .map_err(|e| Failure::Fatal(e.into()))?;
        dests.push((d, client, store, lock));
    }
    let flags = sync::CycleFlags {
        allow_mass_delete: args.allow_mass_delete,
        allow_origin_change: args.allow_origin_change,
    };
    let interval = config.destinations.iter().map(|d| d.interval).min().unwrap_or(config.origin.interval);
    loop {
        let scan = tokio::time::timeout(
            config.origin.timeout,
            sync::scan_origin(&origin, &config.origin.mounts, config.origin.workers),
        )
        .await
        .map_err(|_| anyhow::anyhow!("origin scan timed out after {:?}", config.origin.timeout))
        .and_then(|r| r)
        .context("origin scan");
        let mut any_failed = false;
        match scan {
            Err(e) if args.once => return Err(Failure::Fatal(e)),
            Err(e) => {
                error!("{e:#}; nothing synced this cycle");
                any_failed = true;
            }
            Ok(scan) => {
                info!(secrets = scan.snapshot.len(), mounts = scan.mounts.len(), "origin scanned");
                for (d, client, store, lock) in &dests {
                    let cycle = tokio::time::timeout(
                        d.timeout,
                        sync::destination_cycle(d, &origin, client, &scan, store, lock, flags),
                    )
                    .await
                    .map_err(|_| anyhow::anyhow!("cycle timed out after {:?}; nothing committed", d.timeout))
                    .and_then(|r| r)
                    .with_context(|| format!("destination `{}`", d.name));
                    match cycle {
                        Ok(report) => {
                            println!("destination {}: {report}", d.name);
                            any_failed |= report.failed > 0;
                        }
                        Err(e) if args.once => return Err(Failure::Fatal(e)),
                        Err(e) => {
                            error!("{e:#}");
                            any_failed = true;
                        }
                    }
                }
            }
        }
        if args.once {
            return Ok(if any_failed { ExitCode::from(3) } else { ExitCode::SUCCESS });
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown_signal() => {
                info!("signal received; stopping");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
