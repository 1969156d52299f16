//! The `vsync` binary: the command line, logging, printing and exit codes; the runtime lives
//! in `vsync-engine` and the parts are built in [`compose`].
//!
//! Exit codes (README "Exit codes"): 0 ok, 1 fatal error or failed check, 2 usage or config error,
//! 3 a `--once` cycle that completed with per-secret failures.

mod compose;
mod kit;
mod plugins;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing::{error, info};
use vsync_config::{Config, LogFormat};
use vsync_core::{CycleFlags, PathMapper, PluginCallObserver};
use vsync_engine::{Alerter, Destination, Ended, Engine, Event, Publisher, Role, RunOptions, Telemetry, Tripwire};

use crate::compose::Parts;

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
        /// Output format (`json`: a machine report for CI review).
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// Check connectivity, auth, permissions, mounts and state stores; exit 1 on any problem.
    Check,
    /// Compare destination NAME with the origin on every replicated field; exit 1 on drift.
    Verify {
        /// Destination name from the config.
        #[arg(long)]
        name: String,
        /// Have the destination's next cycle rebuild every drifted key.
        #[arg(long)]
        repair: bool,
        /// Also compare the data of every live version.
        #[arg(long)]
        data: bool,
    },
    /// Check the config (and the plugins it names) offline.
    Validate,
    /// Print the least-privilege Vault policy (HCL) a role needs for the configured mounts.
    Policy {
        #[command(subcommand)]
        role: PolicyRole,
    },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Show the last cycle per role from the state stores; exit 1 when a destination lags more
    /// than --max-lag.
    Status {
        /// Output format.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        format: String,
        /// Exit 1 if any destination lags the origin by more than this (e.g. "5m").
        #[arg(long, value_parser = humantime::parse_duration)]
        max_lag: Option<Duration>,
    },
    /// Print a commented starter config for the given Vaults (tokens from the files it names).
    Init {
        /// Origin Vault address, like https://vault-a.example:8200.
        #[arg(long, value_name = "URL")]
        origin: String,
        /// A destination, as NAME=URL; repeat for each.
        #[arg(long = "destination", value_name = "NAME=URL", required = true)]
        destinations: Vec<String>,
        /// A KV mount to replicate to the same mount everywhere; repeat for each (default secret/).
        #[arg(long = "mount", value_name = "MOUNT")]
        mounts: Vec<String>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the vsync(1) man page (roff), or write every page into --dir.
    Man {
        /// Write vsync.1 and one page per subcommand (vsync-run.1, ...) into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyRole {
    /// The origin's token (read-only).
    Origin,
    /// A destination's token for its Vault.
    Destination {
        /// Destination name from the config.
        #[arg(long)]
        name: String,
    },
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

impl CycleArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            once: self.once,
            flags: CycleFlags {
                allow_mass_delete: self.allow_mass_delete,
                allow_origin_change: self.allow_origin_change,
            },
        }
    }
}

/// Why a command failed, mapped to exit codes.
enum Failure {
    /// Exit 2.
    Config(anyhow::Error),
    /// Exit 1.
    Fatal(anyhow::Error),
}

type Outcome = Result<ExitCode, Failure>;

fn config_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Config(e.into())
}

fn fatal(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Fatal(e.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = kit::without_config(&cli.command) {
        return code;
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => Some(c),
        // `plugin validate` works without a config file.
        Err(_) if matches!(cli.command, Command::Plugin { .. }) => None,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
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
    match runtime.block_on(dispatch(cli.command, config)) {
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
    }
}

fn init_logging(flag: Option<&str>, config: Option<&Config>) {
    use std::io::IsTerminal;
    let json = match flag {
        Some(f) => f == "json",
        None => match config.and_then(|c| c.telemetry.log_format) {
            Some(f) => f == LogFormat::Json,
            // Human for a person at a terminal; one JSON object per line for a log collector.
            None => !std::io::stderr().is_terminal(),
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a terminal: a pipe or a log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(command: Command, config: Option<Config>) -> Outcome {
    let Some(config) = config else {
        return match command {
            Command::Plugin { command: PluginCommand::Validate { dir, format } } => plugin_validate(None, &dir, &format),
            _ => Err(config_error(anyhow::anyhow!("no configuration"))),
        };
    };
    match command {
        Command::Run { plugins, cycle } => {
            let dests: Vec<_> = config.destinations.iter().collect();
            if dests.is_empty() {
                return Err(config_error(anyhow::anyhow!("`vsync run` needs at least one [[destination]]")));
            }
            run_role(&config, Role::Run, dests, plugins.as_deref(), cycle.options()).await
        }
        Command::Origin { once } => run_role(&config, Role::Origin, Vec::new(), None, RunOptions { once, ..Default::default() }).await,
        Command::Destination { name, cycle } => {
            let d = destination(&config, &name)?;
            run_role(&config, Role::Destination, vec![d], None, cycle.options()).await
        }
        Command::Plan { name, format } => plan(&config, &name, &format).await,
        Command::Check => check(&config).await,
        Command::Policy { role } => policy(&config, role).await,
        Command::Verify { name, repair, data } => verify(&config, &name, repair, data).await,
        Command::Validate => validate(&config),
        Command::Status { format, max_lag } => status(&config, &format, max_lag).await,
        Command::Plugin { command: PluginCommand::Validate { dir, format } } => plugin_validate(Some(&config), &dir, &format),
        Command::Init { .. } | Command::Completions { .. } | Command::Man { .. } => Ok(ExitCode::SUCCESS), // run before the config is read: kit::without_config
    }
}

fn destination<'c>(config: &'c Config, name: &str) -> Result<&'c vsync_config::Destination, Failure> {
    config
        .destination(name)
        .ok_or_else(|| config_error(anyhow::anyhow!("no destination named `{name}` in the config")))
}

/// Reads the origin's KV v1 digest key, if configured.
fn digest_key(config: &Config) -> Result<Option<Vec<u8>>, Failure> {
    let Some(path) = &config.origin.digest_key_file else {
        return Ok(None);
    };
    let key = std::fs::read(path)
        .with_context(|| format!("cannot read digest_key_file {}", path.display()))
        .map_err(config_error)?;
    if key.len() < 16 {
        return Err(config_error(anyhow::anyhow!(
            "digest_key_file {} holds {} bytes; use at least 16 random bytes",
            path.display(),
            key.len()
        )));
    }
    Ok(Some(key))
}

/// The plugin stack of each destination that configures one (one host for all of them);
/// `observer` receives every plugin call (metrics).
fn mappers(
    config: &Config,
    dests: &[&vsync_config::Destination],
    dir: Option<&Path>,
    observer: Option<Arc<dyn PluginCallObserver>>,
) -> Result<Vec<Option<Box<dyn PathMapper>>>, Failure> {
    if !dests.iter().any(|d| d.uses_plugins()) {
        return Ok(dests.iter().map(|_| None).collect());
    }
    let host = plugins::host(config, dir).map_err(config_error)?;
    dests
        .iter()
        .map(|d| {
            if !d.uses_plugins() {
                return Ok(None);
            }
            let mut stack = plugins::stack(&host, d).map_err(config_error)?;
            if let Some(o) = &observer {
                stack.observe(o.clone());
            }
            Ok(Some(Box::new(stack) as Box<dyn PathMapper>))
        })
        .collect()
}

/// Prints the findings; the number of problems.
fn print_findings(findings: &[vsync_engine::check::Finding]) -> usize {
    for f in findings {
        println!("{f}");
    }
    findings.iter().filter(|f| f.problem.is_some()).count()
}

/// `vsync check`: every start-up check, all problems reported at once; exit 1 if any.
async fn check(config: &Config) -> Outcome {
    let parts = Parts::build(config, &config.destinations).await;
    let findings = parts.check(true).await;
    let problems = print_findings(&findings);
    if problems == 0 {
        println!("all {} checks passed", findings.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{problems} of {} checks failed", findings.len());
        Ok(ExitCode::from(1))
    }
}

/// `vsync origin`, `vsync destination`, `vsync run`: builds the parts once, checks them, takes
/// the sides' locks (waiting as a standby on Consul while another instance holds one), and
/// hands them to the engine's role loop.
async fn run_role(
    config: &Config,
    role: Role,
    dests: Vec<&vsync_config::Destination>,
    plugins_dir: Option<&Path>,
    options: RunOptions,
) -> Outcome {
    let mut shutdown = Box::pin(vsync_engine::signals::shutdown());
    let lock_options = vsync_engine::locks::options_from_env().map_err(|f| config_error(anyhow::anyhow!(f.message)))?;
    let publishes = role != Role::Destination;
    let digest_key = match publishes {
        true => digest_key(config)?,
        // A destination uses the key only to check KV v1 values against the scan; without
        // it those values are compared each cycle (slower, never wrong).
        false => digest_key(config).unwrap_or_else(|_| {
            tracing::warn!("digest_key_file is not readable here; KV v1 values are compared each cycle");
            None
        }),
    };
    let shared_key = digest_key.clone().map(std::sync::Arc::new);
    let telemetry = Arc::new(Telemetry::new());
    let observer: Arc<dyn PluginCallObserver> = telemetry.clone();
    let mut mappers = mappers(config, &dests, plugins_dir, Some(observer))?;
    if let Some(address) = &config.telemetry.listen {
        // Before the checks and locks: a standby answers /healthz too.
        vsync_engine::telemetry::serve(address, telemetry.clone()).await.map_err(fatal)?;
    }
    let parts = Parts::build(config, dests).await;
    let origin_vault = parts.origin_vault.as_ref().map_err(|e| fatal(anyhow::anyhow!("{e:#}")))?;
    let origin_store = parts.origin_store.as_ref().map_err(|e| config_error(anyhow::anyhow!("{e:#}")))?;
    // Checks before the locks: a standby reports a broken configuration now, not at takeover.
    let findings = parts.check(publishes).await;
    // A destination that is unreachable or sealed is a fault of that side alone: it starts
    // when it is back, the others start now. Anything else stops the process.
    let problems: Vec<String> = findings.iter().filter(|f| f.problem.is_some() && !f.transient).map(ToString::to_string).collect();
    if !problems.is_empty() {
        return Err(fatal(anyhow::anyhow!(
            "start-up checks failed (run `vsync check` for the full report):\n{}",
            problems.join("\n")
        )));
    }
    let unavailable: std::collections::BTreeSet<&str> = findings.iter().filter(|f| f.transient).map(|f| f.side.as_str()).collect();
    for f in findings.iter().filter(|f| f.transient) {
        tracing::error!("{f}; this destination is retried on its own schedule, the other sides start now");
    }
    info!(checks = findings.len(), unavailable = unavailable.len(), "start-up checks passed");
    let tripwire = Tripwire::new();
    let once_limit = |timeout: Duration| options.once.then_some(timeout);
    let publisher = match publishes {
        true => {
            let limit = once_limit(parts.origin_spec.timeout);
            let Some(lock) = vsync_engine::locks::take(origin_store, vsync_engine::ORIGIN_SIDE, &lock_options, limit, &mut shutdown).await.map_err(|f| fatal(anyhow::anyhow!(f.message)))? else {
                return Ok(ExitCode::SUCCESS);
            };
            // Listening only once this process is the origin's writer: a standby on the same
            // host would otherwise hold the port the device reports to.
            let audit = match (&config.origin.audit_listen, options.once) {
                (Some(listen), false) => {
                    let addr: std::net::SocketAddr = listen.parse().map_err(|e| config_error(anyhow::anyhow!("origin.audit_listen `{listen}`: {e}")))?;
                    let settings = vsync_engine::audit::AuditSettings {
                        listen: addr,
                        mounts: parts.origin_spec.mounts.clone(),
                        namespace: config.origin.vault.namespace.clone(),
                        allow: config.origin.audit_allow().unwrap_or_else(vsync_engine::audit::loopback),
                    };
                    let feed = vsync_engine::audit::AuditFeed::bind_with(settings).await.map_err(|e| fatal(anyhow::anyhow!(e)))?;
                    Some(feed)
                }
                _ => None,
            };
            Some(Publisher { spec: parts.origin_spec.clone(), lock, digest_key, audit })
        }
        false => None,
    };
    let mut destinations = Vec::new();
    for (d, mapper) in parts.destinations.iter().zip(mappers.drain(..)) {
        let vault = d.vault.as_ref().map_err(|e| fatal(anyhow::anyhow!("{e:#}")))?;
        let store = d.store.as_ref().map_err(|e| config_error(anyhow::anyhow!("{e:#}")))?;
        let side = vsync_engine::side_name(&d.spec.name);
        let Some(lock) = vsync_engine::locks::take(store, &side, &lock_options, once_limit(d.spec.timeout), &mut shutdown).await.map_err(|f| fatal(anyhow::anyhow!(f.message)))? else {
            // Stopped while waiting: give up what is held already, so its standby takes over now.
            for l in publisher.map(|p| p.lock).into_iter().chain(destinations.into_iter().map(|d: Destination| d.lock)) {
                l.release().await;
            }
            return Ok(ExitCode::SUCCESS);
        };
        destinations.push(Destination {
            spec: d.spec.clone(),
            vault: vault.client.clone(),
            store: store.clone(),
            lock,
            mapper: mapper.map(vsync_engine::destination::share),
            digest_key: shared_key.clone(),
            progress: Some(progress::for_cycles(options.once)),
        });
    }
    origin_vault.keep_token("origin", &tripwire);
    let mut deferred = std::collections::HashMap::new();
    for d in &parts.destinations {
        let side = format!("destination {}", d.spec.name);
        if unavailable.contains(side.as_str())
            && let Some(gate) = d.start_gate(&origin_vault.client, &parts.origin_spec.mounts, &tripwire)
        {
            deferred.insert(d.spec.name.clone(), gate);
        }
        // A deferred login keeps its token from the moment it succeeds.
        if let Some(v) = d.vault.as_ref().ok().filter(|v| v.login_pending.is_none()) {
            v.keep_token(&side, &tripwire);
        }
    }
    let engine = Engine {
        role,
        origin_vault: origin_vault.client.clone(),
        origin_store: origin_store.clone(),
        publisher,
        destinations,
        alerter: Alerter::new(config.alert.as_ref().map(|a| a.webhook.clone())),
        tripwire,
        reporter: Box::new(print_event),
        telemetry,
        deferred,
    };
    match vsync_engine::run(engine, options, shutdown).await {
        Ok(Ended::Stopped) | Ok(Ended::Once { per_secret_failures: false }) => Ok(ExitCode::SUCCESS),
        Ok(Ended::Once { per_secret_failures: true }) => Ok(ExitCode::from(3)),
        Err(fault) => Err(fatal(anyhow::anyhow!(fault.message))),
    }
}

fn print_event(event: &Event<'_>) {
    match event {
        Event::OriginScanned { info, published } => println!(
            "origin: {} secrets in {} buckets{}",
            info.entries.len(),
            info.entries.count(),
            if *published { ", published" } else { ", unchanged" }
        ),
        Event::OriginUpdated { info, changed, published } => println!(
            "origin: {changed} of {} secrets updated from audit events{}",
            info.entries.len(),
            if *published { ", published" } else { ", unchanged" }
        ),
        Event::DestinationCycle { name, report } => println!("destination {name}: {report}"),
    }
}


/// `vsync status`: the records each role writes per cycle, and each destination's lag.
async fn status(config: &Config, format: &str, max_lag: Option<Duration>) -> Outcome {
    use vsync_engine::status;
    let origin_store = compose::state_store("origin", &config.origin.state).map_err(config_error)?;
    let mut stores = Vec::new();
    for d in &config.destinations {
        stores.push((d.name.clone(), compose::state_store(&format!("destination {}", d.name), &d.state).map_err(config_error)?));
    }
    let report = status::report(&origin_store, &stores, max_lag, std::time::SystemTime::now()).await;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&report).map_err(fatal)?);
    } else {
        print!("{}", report.human());
    }
    if !report.lagging.is_empty() {
        let allowed = humantime::format_duration(max_lag.unwrap_or_default());
        eprintln!("error: destination(s) lagging more than the allowed {allowed}: {}", report.lagging.join(", "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `vsync policy origin|destination --name NAME`: mount kinds are read from the Vault.
async fn policy(config: &Config, role: PolicyRole) -> Outcome {
    let kinds = |side: String, settings: vsync_config::VaultSettings, mounts: Vec<String>| async move {
        let client = compose::vault_login(&side, &settings, vsync_config::Workers::Fixed(1)).await.map_err(fatal)?.0;
        let kinds = vsync_engine::policy::mount_kinds(&client, mounts).await.map_err(|f| fatal(anyhow::anyhow!("{side}: {}", f.message)))?;
        let scans = match kinds.first() {
            Some((m, kind)) => vsync_engine::policy::server_scans(&client, m, *kind).await,
            None => false,
        };
        Ok::<_, Failure>((kinds, scans))
    };
    let text = match role {
        PolicyRole::Origin => {
            let (kinds, scans) = kinds("origin".into(), config.origin.vault.clone(), config.origin_spec().mounts).await?;
            vsync_engine::policy::origin(&kinds, scans)
        }
        PolicyRole::Destination { name } => {
            let d = destination(config, &name)?;
            let mounts = d.spec().mounts.into_values().collect();
            vsync_engine::policy::destination(&kinds(format!("destination {name}"), d.vault.clone(), mounts).await?.0, d.versions)
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// What the read-only commands of one destination (`plan`, `verify`) use: its parts and its
/// plugin stack; no lock is taken, so they run beside the role.
struct OneDestination {
    parts: Parts,
    mapper: Option<Box<dyn PathMapper>>,
}

impl OneDestination {
    async fn build(config: &Config, name: &str) -> Result<Self, Failure> {
        let d = destination(config, name)?;
        let mapper = mappers(config, &[d], None, None)?.pop().flatten();
        Ok(Self { parts: Parts::build(config, [d]).await, mapper })
    }

    /// The origin Vault, the destination Vault and the destination's store.
    fn parts(&self) -> Result<(vsync_vault::VaultClient, vsync_vault::VaultClient, vsync_state::StateStore), Failure> {
        let origin = self.parts.origin_vault.as_ref().map_err(|e| fatal(anyhow::anyhow!("{e:#}")))?;
        let part = &self.parts.destinations[0];
        let store = part.store.as_ref().map_err(|e| config_error(anyhow::anyhow!("{e:#}")))?;
        let vault = part.vault.as_ref().map_err(|e| fatal(anyhow::anyhow!("{e:#}")))?;
        Ok((origin.client.clone(), vault.client.clone(), store.clone()))
    }
}

/// `vsync verify --name NAME [--repair] [--data]`: reads both Vaults, never writes to them.
async fn verify(config: &Config, name: &str, repair: bool, data: bool) -> Outcome {
    let mut one = OneDestination::build(config, name).await?;
    let (origin_vault, vault, store) = one.parts()?;
    let paths = one.mapper.as_deref_mut().map(|m| m as &mut dyn PathMapper);
    let (spec, mounts) = (&one.parts.destinations[0].spec, &one.parts.origin_spec.mounts);
    let report = vsync_engine::verify::verify(&origin_vault, mounts, spec, &vault, &store, paths, data)
        .await
        .map_err(|f| fatal(anyhow::anyhow!(f.message)))?;
    for drift in &report.drifted {
        println!("DRIFT   {} -> {}: {}", drift.key, drift.target, drift.what);
    }
    for target in &report.extra {
        println!("DRIFT   {target}: at the destination only (no origin key maps to it)");
    }
    for key in &report.pending {
        println!("pending {key}: changed at the origin since the last cycle");
    }
    for target in &report.pending_removals {
        println!("pending {target}: removed by the next cycle (its origin key is gone)");
    }
    println!(
        "verify `{name}`: {} checked, {} drifted ({} at the destination only), {} pending",
        report.checked,
        report.drifted.len() + report.extra.len(),
        report.extra.len(),
        report.pending.len() + report.pending_removals.len()
    );
    if !report.has_drift() {
        return Ok(ExitCode::SUCCESS);
    }
    if repair {
        let keys = report.drifted.iter().map(|d| d.key.clone()).collect();
        vsync_engine::verify::request_repair(&store, name, keys, report.extra.clone())
            .await
            .map_err(|f| fatal(anyhow::anyhow!(f.message)))?;
        println!(
            "repair requested: the next cycle of `{name}` rebuilds {} key(s) and removes {} (under the mass-delete guard)",
            report.drifted.len(),
            report.extra.len()
        );
    }
    Ok(ExitCode::from(1))
}

fn validate(config: &Config) -> Outcome {
    // Every plugin a destination names is loaded, its kind checked and its config applied.
    let dests: Vec<_> = config.destinations.iter().collect();
    let stacks = if config.plugins.dir.is_some() && !dests.iter().any(|d| d.uses_plugins()) {
        plugins::host(config, None).map_err(config_error)?;
        0
    } else {
        mappers(config, &dests, None, None)?.iter().filter(|m| m.is_some()).count()
    };
    println!(
        "config OK: origin with {} mount(s), {} destination(s), {stacks} plugin stack(s) loaded and configured",
        config.origin.mounts.len(),
        config.destinations.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `vsync plugin validate DIR`: loads every component, runs its vectors; exit 0 only if all pass.
fn plugin_validate(config: Option<&Config>, dir: &Path, format: &str) -> Outcome {
    if !dir.is_dir() {
        return Err(config_error(anyhow::anyhow!("plugin validate: {} is not a directory", dir.display())));
    }
    let passed = plugins::validate_dir(config, dir, format == "json").map_err(config_error)?;
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `vsync plan --name NAME`: what a cycle would do, touching neither Vault.
async fn plan(config: &Config, name: &str, format: &str) -> Outcome {
    let key = digest_key(config)?;
    let mut one = OneDestination::build(config, name).await?;
    let (origin_vault, vault, store) = one.parts()?;
    let info = vsync_engine::origin::scan(&origin_vault, &one.parts.origin_spec, key.as_deref())
        .await
        .map_err(|f| fatal(anyhow::anyhow!(f.message)))?;
    // `plan` only reads: the destination's side is not locked, so it runs beside the role.
    let paths = one.mapper.as_deref_mut().map(|m| m as &mut dyn PathMapper);
    // The bar only with human output on a terminal; JSON goes to stdout, the bar to stderr.
    let bar = progress::for_cycles(format == "human");
    let preview = vsync_engine::preview(&one.parts.destinations[0].spec, &store, paths, &origin_vault, &vault, &info, Some(&*bar))
        .await
        .map_err(|f| fatal(anyhow::anyhow!(f.message)))?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&preview.json(name)).map_err(fatal)?);
    } else {
        print!("{}", preview.human(name));
    }
    Ok(ExitCode::SUCCESS)
}
