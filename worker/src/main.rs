use std::io::IsTerminal as _;

use clap::{CommandFactory as _, FromArgMatches as _};
use lapin::Connection;
use shared::amqp::Names;
use sqlx::PgPool;
use worker::{
    clerk_api::ClerkApi,
    config::{
        Command, Config, CreditsAdjustArgs, CreditsCommand, DlqCommand, DlqListArgs, DlqReplayArgs,
        PruneArgs, ReplayArgs, Settings, SyncCommand, SyncUsersArgs,
    },
    credits::adjust::{adjust, Adjustment, Target},
    dlq, migrate, prune, replay, sync_users, Worker,
};

/// Exit status of a command line clap refused.
const USAGE_ERROR: i32 = 2;

/// Database connections an operator's command uses.
const COMMAND_POOL_SIZE: u32 = 2;

/// What the command line asks for.
enum Job {
    /// `worker migrate`.
    Migrate,
    /// `worker run` or an operator's command.
    Command(Command),
}

fn main() {
    let (config, job) = parse();
    // `worker run` refuses a configuration it cannot use on one line, before
    // its logs start (the other commands check what they use as they go).
    let settings = match job {
        Job::Command(Command::Run) => match config.settings() {
            Ok(settings) => Some(settings),
            Err(error) => {
                eprintln!("worker: {error}");
                std::process::exit(1);
            }
        },
        _ => None,
    };
    if !matches!(job, Job::Command(Command::Run)) && std::env::var_os("RUST_LOG").is_none() {
        // An operator's command prints its own results and errors; its log
        // shows only warnings unless asked (the broker client logs a refused
        // operation as an error, which the command reports itself). Still
        // single-threaded here.
        std::env::set_var("RUST_LOG", "warn,lapin=off");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("worker: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    runtime.block_on(dispatch(&config, job, settings));
}

async fn dispatch(config: &Config, job: Job, settings: Option<Settings>) {
    let _telemetry = shared::telemetry::init(&config.log, "clerk-worker");
    let result = match &job {
        Job::Migrate => migrate(config).await,
        Job::Command(command) => match command {
            Command::Run => run(config, settings).await,
            Command::Dlq {
                command: DlqCommand::List(args),
            } => dlq_list(config, args).await,
            Command::Dlq {
                command: DlqCommand::Replay(args),
            } => dlq_replay(config, args).await,
            Command::Replay(args) => replay_from_store(config, args).await,
            Command::Prune(args) => prune(config, args).await,
            Command::Credits {
                command: CreditsCommand::Adjust(args),
            } => credits_adjust(config, args).await,
            Command::Sync {
                command: SyncCommand::Users(args),
            } => sync_users(config, args).await,
        },
    };
    if let Err(error) = result {
        match job {
            Job::Command(Command::Run) => {
                tracing::error!(error.message = %format!("{error:#}"), "worker stopped");
                eprintln!("worker: {error:#}");
            }
            // A database error says what failed; its cause says why.
            Job::Migrate => eprintln!("worker: {error:#}"),
            // The commands' errors name their cause themselves.
            Job::Command(_) => eprintln!("worker: {error}"),
        }
        std::process::exit(1);
    }
}

/// Parses the command line; a refused one is reported on one line. The
/// `migrate` subcommand is added here to the tree of `config.rs`; it reads
/// only the database settings.
fn parse() -> (Config, Job) {
    let mut cli = Config::command().subcommand(migrate::command());
    let matches = match cli.try_get_matches_from_mut(std::env::args_os()) {
        Ok(matches) => matches,
        Err(error) => refuse(error),
    };
    let migrating = matches.subcommand_name() == Some(migrate::NAME);
    match Config::from_arg_matches(&matches) {
        Ok(config) if migrating => (config, Job::Migrate),
        Ok(config) => {
            let command = config.command.clone().unwrap_or(Command::Run);
            (config, Job::Command(command))
        }
        Err(error) => refuse(error.format(&mut cli)),
    }
}

/// Exits on a command line clap did not accept (or on --help and --version).
fn refuse(error: clap::Error) -> ! {
    if !error.use_stderr() {
        error.exit();
    }
    eprintln!("worker: {} (see --help)", one_line(&error.to_string()));
    std::process::exit(USAGE_ERROR);
}

/// The first paragraph of clap's message, on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(config: &Config, settings: Option<Settings>) -> anyhow::Result<()> {
    let settings = match settings {
        Some(settings) => settings,
        None => config.settings()?,
    };
    let listener = tokio::net::TcpListener::bind(config.ops_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.ops_addr))?;
    let worker = Worker::build(settings, listener).await?;
    tracing::info!(ops_addr = %worker.ops_addr()?, "worker ready");
    worker.run(shared::shutdown::on_signal()).await?;
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    println!("{}", migrate::run(&config.database).await?);
    Ok(())
}

async fn database(config: &Config) -> anyhow::Result<PgPool> {
    Ok(shared::db::connect_and_migrate(
        &config.database.database_url,
        COMMAND_POOL_SIZE,
        config.database.patience(),
    )
    .await?)
}

async fn broker(config: &Config) -> anyhow::Result<(Connection, Names)> {
    let connection = shared::amqp::connect(&config.amqp.amqp_url, "clerk-worker-command").await?;
    Ok((connection, Names::new(&config.amqp.amqp_prefix)))
}

async fn close(pool: PgPool, connection: Connection) {
    let _ = connection.close(200, "done".into()).await;
    pool.close().await;
}

/// Running totals on stderr, only for a person watching a terminal.
fn progress(what: &'static str) -> impl FnMut(u64) {
    let terminal = std::io::stderr().is_terminal();
    move |done| {
        if terminal {
            eprintln!("{what} {done}…");
        }
    }
}

/// Progress of `sync users` on a terminal; in a dry run, each change it
/// would make on standard output.
struct SyncProgress {
    terminal: bool,
    dry_run: bool,
}

impl sync_users::Progress for SyncProgress {
    fn step(&mut self, phase: &str, done: u64) {
        if self.terminal {
            eprintln!("{phase} {done}…");
        }
    }

    fn change(&mut self, description: &str) {
        if self.dry_run {
            println!("would have {description}");
        }
    }
}

async fn dlq_list(config: &Config, args: &DlqListArgs) -> anyhow::Result<()> {
    let pool = database(config).await?;
    let (connection, names) = broker(config).await?;
    let listing = dlq::list(&pool, &connection, &names, args.limit).await;
    close(pool, connection).await;
    let listing = listing?;
    if args.json {
        println!("{}", listing.to_json());
    } else {
        print!("{}", listing.to_table());
    }
    Ok(())
}

async fn dlq_replay(config: &Config, args: &DlqReplayArgs) -> anyhow::Result<()> {
    let selection = if let Some(event_type) = &args.event_type {
        dlq::Selection::Type(event_type.clone())
    } else if args.all {
        dlq::Selection::All
    } else {
        dlq::Selection::Ids(args.ids.clone())
    };
    let request = dlq::ReplayRequest {
        selection,
        dry_run: args.dry_run,
        actor: args.audit.actor.clone(),
    };
    let pool = database(config).await?;
    let (connection, names) = broker(config).await?;
    let report = dlq::replay(
        &pool,
        &connection,
        &names,
        &request,
        &mut progress("replayed"),
    )
    .await;
    close(pool, connection).await;
    let report = report?;
    for info in &report.would_replay {
        println!(
            "would replay {} {} (attempts {}: {})",
            info.svix_id.as_deref().unwrap_or("-"),
            info.event_type,
            info.attempts
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
            info.last_error.as_deref().unwrap_or("no error recorded"),
        );
    }
    if report.without_id > 0 {
        eprintln!(
            "worker: left {} selected message(s) without a message id in {}: they cannot be replayed",
            report.without_id, report.queue
        );
    }
    if report.repeated > 0 {
        eprintln!(
            "worker: left {} message(s) in {} whose svix id was already replayed in this run",
            report.repeated, report.queue
        );
    }
    println!("{report}");
    Ok(())
}

async fn replay_from_store(config: &Config, args: &ReplayArgs) -> anyhow::Result<()> {
    let selection = match args.since {
        Some(since) => replay::StoreSelection::Since {
            since,
            event_type: args.event_type.clone(),
        },
        None => replay::StoreSelection::Ids(args.ids.clone()),
    };
    let pool = database(config).await?;
    let (connection, names) = broker(config).await?;
    let report = replay::replay_from_store(
        &pool,
        &connection,
        &names,
        &selection,
        &args.audit.actor,
        &mut progress("republished"),
    )
    .await;
    close(pool, connection).await;
    println!("{}", report?);
    Ok(())
}

async fn prune(config: &Config, args: &PruneArgs) -> anyhow::Result<()> {
    let pool = database(config).await?;
    let request = prune::PruneRequest::new(args.older_than, args.dry_run, &args.audit.actor);
    let report = prune::prune(&pool, &request, &mut progress("deleted")).await;
    pool.close().await;
    println!("{}", report?);
    Ok(())
}

async fn credits_adjust(config: &Config, args: &CreditsAdjustArgs) -> anyhow::Result<()> {
    let target = match (args.set, args.add) {
        (Some(n), _) => Target::Set(n),
        (None, Some(n)) => Target::Add(n),
        (None, None) => anyhow::bail!("one of --set or --add is required"),
    };
    let pool = database(config).await?;
    let adjusted = adjust(
        &pool,
        &Adjustment {
            user_id: args.user_id.clone(),
            target,
            reason: args.reason.clone(),
            actor: args.actor.clone(),
        },
    )
    .await;
    pool.close().await;
    let adjusted = adjusted?;
    println!(
        "user={} before={} after={} (Clerk metadata sync scheduled)",
        args.user_id, adjusted.before, adjusted.after
    );
    Ok(())
}

async fn sync_users(config: &Config, args: &SyncUsersArgs) -> anyhow::Result<()> {
    let Some(clerk) = config.clerk()? else {
        anyhow::bail!("CLERK_SECRET_KEY is not set: sync users needs the Clerk Backend API");
    };
    let api = ClerkApi::new(&clerk.api_url, clerk.secret_key)?;
    let pool = database(config).await?;
    let catalog = config.catalog()?;
    let request = sync_users::SyncRequest {
        dry_run: args.dry_run,
        page_size: sync_users::PAGE_SIZE,
        retry_base_delay: std::time::Duration::from_millis(500),
        actor: args.audit.actor.clone(),
    };
    let mut progress = SyncProgress {
        terminal: std::io::stderr().is_terminal(),
        dry_run: args.dry_run,
    };
    let report = sync_users::sync_users(&pool, &api, &catalog, &request, &mut progress).await;
    pool.close().await;
    let report = report?;
    if args.dry_run {
        println!("dry run: {report}");
    } else {
        println!("{report}");
    }
    Ok(())
}
