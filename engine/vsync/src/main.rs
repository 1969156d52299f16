//! The `vsync` binary: command line, logging, exit codes, and the composition root that wires
//! configuration into the engine crates.
//!
//! Exit codes (DESIGN section 7): 0 ok, 1 fatal error or failed check, 2 usage or config error,
//! 3 a `--once` cycle that completed with per-secret failures.

mod check;
mod plugins;
mod runtime;
mod setup;
mod sync;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio::sync::Notify;
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
        /// Directory of extra plugin components (overrides `[plugins] dir`).
        #[arg(long)]
        plugins: Option<PathBuf>,
        #[command(flatten)]
        cycle: CycleArgs,
    },
    /// Run the origin role: scan and publish the origin sync info.
    Origin {
        /// Run one scan, publish, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Run one destination role: follow the origin's published info.
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
    /// Load every component in DIR, check world and API version, run its test vectors
    /// (`<name>.vectors.toml`), enforce limits; exit 0 only if all pass.
    Validate {
        /// Directory of components.
        dir: PathBuf,
        /// Output format.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
}

impl CycleArgs {
    fn flags(&self) -> sync::CycleFlags {
        sync::CycleFlags {
            allow_mass_delete: self.allow_mass_delete,
            allow_origin_change: self.allow_origin_change,
        }
    }
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
            Command::Plugin { command: PluginCommand::Validate { dir, format } } => plugin_validate(None, &dir, &format),
            _ => Err(Failure::Config(anyhow::anyhow!("no configuration"))),
        };
    };
    match cli.command {
        Command::Run { plugins, cycle } => run(&config, &cycle, plugins.as_deref()).await,
        Command::Plan { name } => plan(&config, &name).await,
        Command::Validate => validate(&config),
        Command::Origin { once } => origin_role(&config, once).await,
        Command::Destination { name, cycle } => destination_role(&config, &name, &cycle).await,
        Command::Check => check_cmd(&config).await,
        Command::Status => Err(Failure::NotBuilt("status")),
        Command::Plugin { command: PluginCommand::Validate { dir, format } } => plugin_validate(Some(&config), &dir, &format),
    }
}

/// `vsync check`: every startup check, all problems reported at once; exit 1 if any.
async fn check_cmd(config: &Config) -> Result<ExitCode, Failure> {
    let findings = check::run(config, check::Scope::All).await;
    for f in &findings {
        println!("{f}");
    }
    let problems = findings.iter().filter(|f| f.problem.is_some()).count();
    if problems == 0 {
        println!("all {} checks passed", findings.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{problems} of {} checks failed", findings.len());
        Ok(ExitCode::from(1))
    }
}

/// The checks a role runs when it starts: problems are fatal (exit 1), listed together.
async fn startup_check(config: &Config, scope: check::Scope<'_>) -> Result<(), Failure> {
    let findings = check::run(config, scope).await;
    let problems: Vec<String> = findings
        .iter()
        .filter(|f| f.problem.is_some())
        .map(ToString::to_string)
        .collect();
    if problems.is_empty() {
        info!(checks = findings.len(), "start-up checks passed");
        return Ok(());
    }
    Err(Failure::Fatal(anyhow::anyhow!(
        "start-up checks failed (run `vsync check` for the full report):\n{}",
        problems.join("\n")
    )))
}

fn validate(config: &Config) -> Result<ExitCode, Failure> {
    for d in &config.destinations {
        if d.versions == vsync_config::VersionsMode::All {
            return Err(Failure::Config(anyhow::anyhow!(
                "destination `{}`: versions = \"all\" is not built yet; set versions = \"latest\"",
                d.name
            )));
        }
    }
    // Every plugin a destination names is loaded, its kind checked and its config applied.
    let mut stacks = 0;
    if config.destinations.iter().any(plugins::uses_plugins) || config.plugins.dir.is_some() {
        let host = plugins::host(config, None).map_err(Failure::Config)?;
        for d in config.destinations.iter().filter(|d| plugins::uses_plugins(d)) {
            plugins::stack(&host, d).map_err(Failure::Config)?;
            stacks += 1;
        }
    }
    println!(
        "config OK: origin with {} mount(s), {} destination(s), {stacks} plugin stack(s) loaded and configured",
        config.origin.mounts.len(),
        config.destinations.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `vsync plugin validate DIR`: loads every component, runs its vectors; exit 0 only if all pass.
fn plugin_validate(config: Option<&Config>, dir: &std::path::Path, format: &str) -> Result<ExitCode, Failure> {
    if !dir.is_dir() {
        return Err(Failure::Config(anyhow::anyhow!("plugin validate: {} is not a directory", dir.display())));
    }
    let passed = plugins::validate_dir(config, dir, format == "json").map_err(Failure::Config)?;
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Reads the origin's KV v1 digest key, if configured.
fn digest_key(config: &Config) -> Result<Option<Vec<u8>>, Failure> {
    let Some(path) = &config.origin.digest_key_file else {
        return Ok(None);
    };
    let key = std::fs::read(path)
        .with_context(|| format!("cannot read digest_key_file {}", path.display()))
        .map_err(Failure::Config)?;
    if key.len() < 16 {
        return Err(Failure::Config(anyhow::anyhow!(
            "digest_key_file {} holds {} bytes; use at least 16 random bytes",
            path.display(),
            key.len()
        )));
    }
    Ok(Some(key))
}

/// One complete origin scan, bounded by the origin timeout.
async fn scan(config: &Config, origin: &vsync_vault::VaultClient, key: Option<&[u8]>) -> Result<sync::OriginInfo> {
    let info = tokio::time::timeout(
        config.origin.timeout,
        sync::scan_origin(origin, &config.origin.mounts, config.origin.workers, key, setup::bucket_count(&config.origin.state)?),
    )
    .await
    .map_err(|_| anyhow::anyhow!("origin scan timed out after {:?}", config.origin.timeout))
    .and_then(|r| r)
    .context("origin scan")?;
    info!(secrets = info.info.len(), buckets = info.info.count(), mounts = info.mounts.len(), "origin scanned");
    Ok(info)
}

async fn plan(config: &Config, name: &str) -> Result<ExitCode, Failure> {
    let d = config
        .destination(name)
        .ok_or_else(|| Failure::Config(anyhow::anyhow!("no destination named `{name}` in the config")))?;
    let (origin, ..) = setup::vault_login("origin", &config.origin.vault).await.map_err(Failure::Fatal)?;
    let store = setup::state_store(&format!("destination {name}"), &d.state).map_err(Failure::Config)?;
    let key = digest_key(config)?;
    let info = scan(config, &origin, key.as_deref()).await.map_err(Failure::Fatal)?;
    let dest = sync::load_dest(&store, name, info.info.count()).await.map_err(Failure::Fatal)?;
    let host = plugin_host(config, std::iter::once(d), None)?;
    let mut stack = match &host {
        Some(h) => Some(plugins::stack(h, d).map_err(Failure::Config)?),
        None => None,
    };
    let plan = sync::plan_for(d, &info, &dest, stack.as_mut()).map_err(Failure::Config)?.plan;
    for key in &plan.failed {
        println!("FAIL   {key}: its path could not be mapped (see the log)");
    }
    for action in plan.writes.iter().chain(plan.removals.iter()) {
        use vsync_core::Action;
        match action {
            Action::CopyV2 { key, version, target, reason } => {
                println!("copy   {key} v{version} -> {target} ({reason:?})")
            }
            Action::SyncV1 { key, target } => println!("check  {key} -> {target} (kv1)"),
            Action::Record { key, .. } => println!("record {key} (metadata only or no live version)"),
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

/// `vsync origin`: scan and publish, every `interval`.
async fn origin_role(config: &Config, once: bool) -> Result<ExitCode, Failure> {
    let mut shutdown = runtime::Shutdown::install();
    let origin = setup::connect("origin", &config.origin.vault, &shutdown).await.map_err(Failure::Fatal)?;
    let store = setup::state_store("origin", &config.origin.state).map_err(Failure::Config)?;
    let lock = store.lock_side(sync::ORIGIN_SIDE).map_err(|e| Failure::Fatal(e.into()))?;
    let key = digest_key(config)?;
    startup_check(config, check::Scope::Origin).await?;
    let alerter = runtime::Alerter::new(config.alert.as_ref().map(|a| a.webhook.clone()));
    let mut state_failures = 0;
    loop {
        let cycle = async {
            let info = scan(config, &origin, key.as_deref()).await?;
            let changed = sync::publish_origin(&store, &lock, &info)
                .await
                .with_context(|| format!("publishing the origin info to {}", store.describe()))?;
            Ok::<_, anyhow::Error>((changed, info))
        };
        let result = tokio::select! {
            r = cycle => r,
            _ = shutdown.wait() => return stopped(&shutdown, &alerter, "origin", None).await,
        };
        match result {
            Ok((changed, info)) => {
                state_failures = 0;
                println!(
                    "origin: {} secrets in {} buckets{}",
                    info.info.len(),
                    info.info.count(),
                    if changed { ", published" } else { ", unchanged" }
                );
            }
            Err(e) => {
                if let Some(e) = escalate(e, &mut state_failures, once) {
                    alerter.fatal("origin", None, &e).await;
                    return Err(Failure::Fatal(e));
                }
            }
        }
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        if !runtime::wait_next(config.origin.interval, None, &mut shutdown).await {
            return stopped(&shutdown, &alerter, "origin", None).await;
        }
    }
}

/// How a role ends when asked to stop: exit 0 on a signal; a fatal error from a background task
/// (a token that cannot be kept) is alerted and exits 1.
async fn stopped(
    shutdown: &runtime::Shutdown,
    alerter: &runtime::Alerter,
    role: &str,
    destination: Option<&str>,
) -> Result<ExitCode, Failure> {
    match shutdown.reason() {
        runtime::Stop::Fatal(message) => {
            let e = runtime::fatal("token", anyhow::anyhow!(message));
            alerter.fatal(role, destination, &e).await;
            Err(Failure::Fatal(e))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Settles a destination cycle's result: `Ok(true)` when something failed and the loop goes
/// on, `Err` for a fatal error (alerted). The `--allow-*` flags hold for one successful cycle.
async fn settle(
    result: Result<bool>,
    state_failures: &mut u32,
    flags: &mut sync::CycleFlags,
    once: bool,
    alerter: &runtime::Alerter,
    role: &str,
    destination: Option<&str>,
) -> Result<bool, Failure> {
    match result {
        Ok(failed) => {
            *state_failures = 0;
            *flags = sync::CycleFlags::default();
            Ok(failed)
        }
        Err(e) => match escalate(e, state_failures, once) {
            Some(e) => {
                alerter.fatal(role, destination, &e).await;
                Err(Failure::Fatal(e))
            }
            None => Ok(true),
        },
    }
}

/// Sorts a failed cycle's error: `Some` (fatal, stop) or `None` (logged; retry next cycle).
/// Transient state-store failures become fatal after [`runtime::STATE_RETRY_BUDGET`] cycles.
fn escalate(e: anyhow::Error, state_failures: &mut u32, once: bool) -> Option<anyhow::Error> {
    if runtime::fatal_kind(&e).is_some() || once {
        return Some(e);
    }
    if runtime::is_state_error(&e) {
        *state_failures += 1;
        if *state_failures >= runtime::STATE_RETRY_BUDGET {
            return Some(runtime::fatal(
                "state-store-unusable",
                e.context(format!("the state store failed {} cycles in a row", *state_failures)),
            ));
        }
    } else {
        *state_failures = 0;
    }
    error!("{e:#}; nothing committed this cycle, retrying next cycle");
    None
}

/// A destination ready to run cycles.
struct DestRuntime<'a> {
    config: &'a vsync_config::Destination,
    client: vsync_vault::VaultClient,
    store: vsync_state::StateStore,
    lock: vsync_state::StoreLock,
    stack: Option<plugins::Stack>,
}

async fn dest_runtime<'a>(
    d: &'a vsync_config::Destination,
    host: Option<&plugins::PluginHost>,
    shutdown: &runtime::Shutdown,
) -> Result<DestRuntime<'a>, Failure> {
    let side = format!("destination {}", d.name);
    let stack = match host {
        Some(h) if plugins::uses_plugins(d) => Some(plugins::stack(h, d).map_err(Failure::Config)?),
        _ => None,
    };
    let client = setup::connect(&side, &d.vault, shutdown).await.map_err(Failure::Fatal)?;
    let store = setup::state_store(&side, &d.state).map_err(Failure::Config)?;
    let lock = store
        .lock_side(&sync::side_name(&d.name))
        .map_err(|e| Failure::Fatal(e.into()))?;
    Ok(DestRuntime { config: d, client, store, lock, stack })
}

/// The plugin host, when any of `dests` uses plugins.
fn plugin_host<'a>(
    config: &Config,
    mut dests: impl Iterator<Item = &'a vsync_config::Destination>,
    dir: Option<&std::path::Path>,
) -> Result<Option<plugins::PluginHost>, Failure> {
    if !dests.any(plugins::uses_plugins) {
        return Ok(None);
    }
    plugins::host(config, dir).map(Some).map_err(Failure::Config)
}

/// Runs one cycle of one destination; `Ok(true)` when some secrets failed.
async fn dest_cycle(
    rt: &mut DestRuntime<'_>,
    origin: &vsync_vault::VaultClient,
    info: &sync::OriginInfo,
    flags: sync::CycleFlags,
) -> Result<bool> {
    let d = rt.config;
    let report = tokio::time::timeout(
        d.timeout,
        sync::destination_cycle(d, origin, &rt.client, info, &rt.store, &rt.lock, rt.stack.as_mut(), flags),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cycle timed out after {:?}; everything it started was cancelled, nothing committed", d.timeout))
    .and_then(|r| r)
    .with_context(|| format!("destination `{}`", d.name))?;
    println!("destination {}: {report}", d.name);
    Ok(report.failed > 0)
}

/// `vsync destination --name NAME`: follow the origin's published info. A cycle runs when the
/// origin's root changes (watched) or every `interval` (backup ticker).
async fn destination_role(config: &Config, name: &str, args: &CycleArgs) -> Result<ExitCode, Failure> {
    let d = config
        .destination(name)
        .ok_or_else(|| Failure::Config(anyhow::anyhow!("no destination named `{name}` in the config")))?;
    let mut shutdown = runtime::Shutdown::install();
    let origin = setup::connect("origin", &config.origin.vault, &shutdown).await.map_err(Failure::Fatal)?;
    let origin_store = setup::state_store("origin", &config.origin.state).map_err(Failure::Config)?;
    let host = plugin_host(config, std::iter::once(d), None)?;
    let mut rt = dest_runtime(d, host.as_ref(), &shutdown).await?;
    startup_check(config, check::Scope::Destination(name)).await?;
    let alerter = runtime::Alerter::new(config.alert.as_ref().map(|a| a.webhook.clone()));
    let trigger = Arc::new(Notify::new());
    if !args.once {
        runtime::spawn_root_watch(origin_store.clone(), sync::ORIGIN_SIDE, trigger.clone());
    }
    let mut flags = args.flags();
    let mut state_failures = 0;
    loop {
        let cycle = async {
            let info = sync::load_origin(&origin_store).await?;
            dest_cycle(&mut rt, &origin, &info, flags).await
        };
        let result = tokio::select! {
            r = cycle => r,
            _ = shutdown.wait() => return stopped(&shutdown, &alerter, "destination", Some(name)).await,
        };
        let failed = settle(result, &mut state_failures, &mut flags, args.once, &alerter, "destination", Some(name)).await?;
        if args.once {
            return Ok(if failed { ExitCode::from(3) } else { ExitCode::SUCCESS });
        }
        if !runtime::wait_next(d.interval, Some(&trigger), &mut shutdown).await {
            return stopped(&shutdown, &alerter, "destination", Some(name)).await;
        }
    }
}

/// `vsync run`: origin and every destination in one process, sharing one scan.
async fn run(config: &Config, args: &CycleArgs, plugins_dir: Option<&std::path::Path>) -> Result<ExitCode, Failure> {
    if config.destinations.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!("`vsync run` needs at least one [[destination]]")));
    }
    let mut shutdown = runtime::Shutdown::install();
    let origin = setup::connect("origin", &config.origin.vault, &shutdown).await.map_err(Failure::Fatal)?;
    let origin_store = setup::state_store("origin", &config.origin.state).map_err(Failure::Config)?;
    let origin_lock = origin_store
        .lock_side(sync::ORIGIN_SIDE)
        .map_err(|e| Failure::Fatal(e.into()))?;
    let key = digest_key(config)?;
    let host = plugin_host(config, config.destinations.iter(), plugins_dir)?;
    let mut dests = Vec::new();
    for d in &config.destinations {
        dests.push(dest_runtime(d, host.as_ref(), &shutdown).await?);
    }
    startup_check(config, check::Scope::All).await?;
    let alerter = runtime::Alerter::new(config.alert.as_ref().map(|a| a.webhook.clone()));
    let mut flags = args.flags();
    let interval = config.destinations.iter().map(|d| d.interval).min().unwrap_or(config.origin.interval);
    let mut state_failures = 0;
    loop {
        let cycle = async {
            let mut any_failed = false;
            let info = scan(config, &origin, key.as_deref()).await?;
            sync::publish_origin(&origin_store, &origin_lock, &info)
                .await
                .with_context(|| format!("publishing the origin info to {}", origin_store.describe()))?;
            for rt in dests.iter_mut() {
                any_failed |= dest_cycle(rt, &origin, &info, flags).await?;
            }
            Ok::<_, anyhow::Error>(any_failed)
        };
        let result = tokio::select! {
            r = cycle => r,
            _ = shutdown.wait() => return stopped(&shutdown, &alerter, "run", None).await,
        };
        let any_failed = settle(result, &mut state_failures, &mut flags, args.once, &alerter, "run", None).await?;
        if args.once {
            return Ok(if any_failed { ExitCode::from(3) } else { ExitCode::SUCCESS });
        }
        if !runtime::wait_next(interval, None, &mut shutdown).await {
            return stopped(&shutdown, &alerter, "run", None).await;
        }
    }
}

