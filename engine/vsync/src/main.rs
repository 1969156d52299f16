//! The `vsync` binary: the command line, logging, printing and exit codes. The config is
//! checked and converted in `vsync-config` (`Config::runtime`), the parts are built from it in
//! [`compose`], and the runtime lives in `vsync-engine`.
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

use clap::{Args, Parser, Subcommand};
use tracing::error;
use vsync_config::{Config, DestinationRuntime, LogFormat, Runtime};
use vsync_core::clock::system_clock;
use vsync_core::{CycleFlags, PathMapper, PluginCallObserver};
use vsync_engine::{Alerter, Ended, Engine, Event, Role, RunOptions, Telemetry, Tripwire};

use vsync_engine::parts::{Locking, Parts};

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

/// A fault's message as a fatal failure.
fn fault(f: vsync_engine::Fault) -> Failure {
    fatal(anyhow::anyhow!(f.message))
}

/// A part that could not be built (its error is text).
fn built<T>(part: &Result<T, String>, fail: fn(anyhow::Error) -> Failure) -> Result<&T, Failure> {
    part.as_ref().map_err(|e| fail(anyhow::anyhow!("{e}")))
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
    let rt = match config.as_ref().map(Config::runtime).transpose() {
        Ok(Some(rt)) => rt,
        Ok(None) => {
            return match command {
                Command::Plugin { command: PluginCommand::Validate { dir, format } } => plugin_validate(None, &dir, &format),
                _ => Err(config_error(anyhow::anyhow!("no configuration"))),
            };
        }
        Err(problems) => return Err(config_error(problems)),
    };
    match command {
        Command::Run { plugins, cycle } => {
            let dests: Vec<_> = rt.destinations.iter().collect();
            if dests.is_empty() {
                return Err(config_error(anyhow::anyhow!("`vsync run` needs at least one [[destination]]")));
            }
            run_role(&rt, Role::Run, dests, plugins.as_deref(), cycle.options()).await
        }
        Command::Origin { once } => run_role(&rt, Role::Origin, Vec::new(), None, RunOptions { once, ..Default::default() }).await,
        Command::Destination { name, cycle } => {
            let d = destination(&rt, &name)?;
            run_role(&rt, Role::Destination, vec![d], None, cycle.options()).await
        }
        Command::Plan { name, format } => plan(&rt, &name, &format).await,
        Command::Check => check(&rt).await,
        Command::Policy { role } => policy(&rt, role).await,
        Command::Verify { name, repair, data } => verify(&rt, &name, repair, data).await,
        Command::Validate => validate(&rt),
        Command::Status { format, max_lag } => status(&rt, &format, max_lag).await,
        Command::Plugin { command: PluginCommand::Validate { dir, format } } => plugin_validate(Some(&rt.plugins), &dir, &format),
        Command::Init { .. } | Command::Completions { .. } | Command::Man { .. } => Ok(ExitCode::SUCCESS), // run before the config is read: kit::without_config
    }
}

fn destination<'r>(rt: &'r Runtime, name: &str) -> Result<&'r DestinationRuntime, Failure> {
    rt.destination(name)
        .ok_or_else(|| config_error(anyhow::anyhow!("no destination named `{name}` in the config")))
}

/// `vsync check`: every start-up check, all problems reported at once; exit 1 if any.
async fn check(rt: &Runtime) -> Outcome {
    let parts = compose::parts(rt, &rt.destinations).await;
    let (text, passed) = vsync_engine::render::findings_human(&parts.check(true).await);
    print!("{text}");
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `vsync origin`, `vsync destination`, `vsync run`: builds the parts once, checks them, takes
/// the sides' locks (waiting as a standby on Consul while another instance holds one), and
/// hands them to the engine's role loop.
async fn run_role(rt: &Runtime, role: Role, dests: Vec<&DestinationRuntime>, plugins_dir: Option<&Path>, options: RunOptions) -> Outcome {
    let mut shutdown = Box::pin(vsync_engine::signals::shutdown());
    let lock_options = vsync_engine::locks::options_from_env().map_err(|f| config_error(anyhow::anyhow!(f.message)))?;
    let publishes = role != Role::Destination;
    let digest_key = match publishes {
        true => rt.origin.read_digest_key().map_err(config_error)?,
        // A destination uses the key only to check KV v1 values against the scan; without
        // it those values are compared each cycle (slower, never wrong).
        false => rt.origin.read_digest_key().unwrap_or_else(|_| {
            tracing::warn!("digest_key_file is not readable here; KV v1 values are compared each cycle");
            None
        }),
    };
    let shared_key = digest_key.clone().map(Arc::new);
    let telemetry = Arc::new(Telemetry::new());
    let observer: Arc<dyn PluginCallObserver> = telemetry.clone();
    let mappers = plugins::mappers(&rt.plugins, &dests, plugins_dir, Some(observer)).map_err(config_error)?;
    if let Some(address) = &rt.telemetry_listen {
        // Before the checks and locks: a standby answers /healthz too.
        vsync_engine::telemetry::serve(&address.to_string(), telemetry.clone()).await.map_err(fatal)?;
    }
    let parts = compose::parts(rt, dests).await;
    let origin_vault = built(&parts.origin_vault, fatal)?;
    let origin_store = built(&parts.origin_store, config_error)?;
    // Checks before the locks: a standby reports a broken configuration now, not at takeover
    // (a destination part that could not be built is one of the problems).
    let unavailable = vsync_engine::parts::startup_verdict(&parts.check(publishes).await).map_err(fault)?;
    let tripwire = Tripwire::new();
    let mut locking = Locking { options: &lock_options, once: options.once, shutdown: &mut shutdown };
    let audit = rt.origin.audit.as_ref().map(|a| vsync_engine::audit::AuditSettings {
        listen: a.listen,
        mounts: parts.origin_spec.mounts.clone(),
        namespace: rt.origin.vault.namespace.clone(),
        allow: a.allow.clone().unwrap_or_else(vsync_engine::audit::loopback),
    });
    let publisher = match publishes {
        true => match parts.publisher(digest_key, audit, &mut locking).await.map_err(fault)? {
            Some(p) => Some(p),
            None => return Ok(ExitCode::SUCCESS),
        },
        false => None,
    };
    let bar = || progress::for_cycles(options.once);
    let Some((publisher, destinations)) = parts.destinations(publisher, mappers, shared_key, &bar, &mut locking).await.map_err(fault)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let deferred = parts.start(origin_vault, &unavailable, &tripwire);
    let engine = Engine {
        role,
        origin_vault: origin_vault.client.clone(),
        origin_store: origin_store.clone(),
        publisher,
        destinations,
        alerter: Alerter::new(rt.alert_webhook.clone()),
        tripwire,
        reporter: Box::new(print_event),
        telemetry,
        deferred,
        clock: system_clock(),
    };
    match vsync_engine::run(engine, options, shutdown).await {
        Ok(Ended::Stopped) | Ok(Ended::Once { per_secret_failures: false }) => Ok(ExitCode::SUCCESS),
        Ok(Ended::Once { per_secret_failures: true }) => Ok(ExitCode::from(3)),
        Err(f) => Err(fault(f)),
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
async fn status(rt: &Runtime, format: &str, max_lag: Option<Duration>) -> Outcome {
    use vsync_engine::status;
    let origin_store = compose::state_store("origin", &rt.origin.store).map_err(config_error)?;
    let mut stores = Vec::new();
    for d in &rt.destinations {
        stores.push((d.spec.name.clone(), compose::state_store(&d.side(), &d.store).map_err(config_error)?));
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
async fn policy(rt: &Runtime, role: PolicyRole) -> Outcome {
    let kinds = |side: String, vault: &vsync_config::VaultSpec, mounts: Vec<String>| {
        // One request at a time: a handful of mount lookups.
        let vault = vsync_config::VaultSpec { adaptive: false, ..vault.clone() };
        async move {
            let client = compose::login(&side, &vault).await.map_err(fatal)?;
            let kinds = vsync_engine::policy::mount_kinds(&client, mounts).await.map_err(|f| fatal(anyhow::anyhow!("{side}: {}", f.message)))?;
            let scans = match kinds.first() {
                Some((m, kind)) => vsync_engine::policy::server_scans(&client, m, *kind).await,
                None => false,
            };
            Ok::<_, Failure>((kinds, scans))
        }
    };
    let text = match role {
        PolicyRole::Origin => {
            let (kinds, scans) = kinds("origin".into(), &rt.origin.vault, rt.origin.spec.mounts.clone()).await?;
            vsync_engine::policy::origin(&kinds, scans)
        }
        PolicyRole::Destination { name } => {
            let d = destination(rt, &name)?;
            let mounts = d.spec.mounts.values().cloned().collect();
            vsync_engine::policy::destination(&kinds(d.side(), &d.vault, mounts).await?.0, d.spec.versions)
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
    async fn build(rt: &Runtime, name: &str) -> Result<Self, Failure> {
        let d = destination(rt, name)?;
        let mapper = plugins::mappers(&rt.plugins, &[d], None, None).map_err(config_error)?.pop().flatten();
        Ok(Self { parts: compose::parts(rt, [d]).await, mapper })
    }

    /// The origin Vault, the destination Vault and the destination's store.
    fn parts(&self) -> Result<(vsync_vault::VaultClient, vsync_vault::VaultClient, vsync_state::StateStore), Failure> {
        let origin = built(&self.parts.origin_vault, fatal)?;
        let part = &self.parts.destinations[0];
        let store = built(&part.store, config_error)?;
        let vault = built(&part.vault, fatal)?;
        Ok((origin.client.clone(), vault.client.clone(), store.clone()))
    }
}

/// `vsync verify --name NAME [--repair] [--data]`: reads both Vaults, never writes to them.
async fn verify(rt: &Runtime, name: &str, repair: bool, data: bool) -> Outcome {
    let mut one = OneDestination::build(rt, name).await?;
    let (origin_vault, vault, store) = one.parts()?;
    let paths = one.mapper.as_deref_mut().map(|m| m as &mut dyn PathMapper);
    let (spec, mounts) = (&one.parts.destinations[0].spec, &one.parts.origin_spec.mounts);
    let vaults = vsync_engine::exact::Vaults { origin: origin_vault.clone(), dest: vault.clone(), clock: system_clock() };
    let report = vsync_engine::verify::verify(&vaults, mounts, spec, &store, paths, data).await.map_err(fault)?;
    print!("{}", vsync_engine::render::verify_human(name, &report));
    if !report.has_drift() {
        return Ok(ExitCode::SUCCESS);
    }
    if repair {
        let keys = report.drifted.iter().map(|d| d.key.clone()).collect();
        vsync_engine::verify::request_repair(&store, name, keys, report.extra.clone()).await.map_err(fault)?;
        println!(
            "repair requested: the next cycle of `{name}` rebuilds {} key(s) and removes {} (under the mass-delete guard)",
            report.drifted.len(),
            report.extra.len()
        );
    }
    Ok(ExitCode::from(1))
}

fn validate(rt: &Runtime) -> Outcome {
    // Every plugin a destination names is loaded, its kind checked and its config applied.
    let dests: Vec<_> = rt.destinations.iter().collect();
    let stacks = if rt.plugins.dir.is_some() && dests.iter().all(|d| d.stack.is_none()) {
        plugins::host(&rt.plugins, None).map_err(config_error)?;
        0
    } else {
        plugins::mappers(&rt.plugins, &dests, None, None).map_err(config_error)?.iter().filter(|m| m.is_some()).count()
    };
    println!(
        "config OK: origin with {} mount(s), {} destination(s), {stacks} plugin stack(s) loaded and configured",
        rt.origin.spec.mounts.len(),
        rt.destinations.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `vsync plugin validate DIR`: loads every component, runs its vectors; exit 0 only if all pass.
fn plugin_validate(limits: Option<&vsync_config::PluginLimits>, dir: &Path, format: &str) -> Outcome {
    if !dir.is_dir() {
        return Err(config_error(anyhow::anyhow!("plugin validate: {} is not a directory", dir.display())));
    }
    let passed = plugins::validate_dir(limits, dir, format == "json").map_err(config_error)?;
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `vsync plan --name NAME`: what a cycle would do, touching neither Vault.
async fn plan(rt: &Runtime, name: &str, format: &str) -> Outcome {
    let key = rt.origin.read_digest_key().map_err(config_error)?;
    let mut one = OneDestination::build(rt, name).await?;
    let (origin_vault, vault, store) = one.parts()?;
    let info = vsync_engine::origin::scan(&origin_vault, &one.parts.origin_spec, key.as_deref()).await.map_err(fault)?;
    // `plan` only reads: the destination's side is not locked, so it runs beside the role.
    let paths = one.mapper.as_deref_mut().map(|m| m as &mut dyn PathMapper);
    // The bar only with human output on a terminal; JSON goes to stdout, the bar to stderr.
    let bar = progress::for_cycles(format == "human");
    let preview = vsync_engine::preview(&one.parts.destinations[0].spec, &store, paths, &origin_vault, &vault, &info, Some(&*bar), system_clock())
        .await
        .map_err(fault)?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&preview.json(name)).map_err(fatal)?);
    } else {
        print!("{}", preview.human(name));
    }
    Ok(ExitCode::SUCCESS)
}
