//! `worker`: parses the command line and dispatches to `worker::commands`.

use clap::{CommandFactory as _, FromArgMatches as _};
use worker::{
    commands::{migrate, Command},
    config::{Config, Settings},
};

/// Exit status of a command line clap refused.
const USAGE_ERROR: i32 = 2;

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
    // One runtime thread unless TOKIO_WORKER_THREADS says otherwise: the
    // worker mostly waits for PostgreSQL and the broker, and with more
    // threads each delivery crosses between them, which costs more CPU than
    // the work (BENCHMARKS.md). Workers scale as processes.
    let threads = match std::env::var("TOKIO_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => 1,
        Ok(value) if value.trim().parse::<usize>().is_ok_and(|n| n > 0) => {
            value.trim().parse().unwrap_or(1)
        }
        _ => {
            eprintln!("worker: TOKIO_WORKER_THREADS must be a number of threads above 0");
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
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
        Job::Migrate => migrate::run(config).await,
        Job::Command(command) => command.run(config, settings).await,
    };
    if let Err(error) = result {
        match job {
            Job::Command(Command::Run) => {
                tracing::error!(error.message = %format!("{error:#}"), "worker stopped");
                eprintln!("worker: {error:#}");
            }
            // A database error says what failed; its cause says why.
            Job::Migrate => eprintln!("worker: {error:#}"),
            // A command's error, with its causes.
            Job::Command(_) => eprintln!("worker: {error:#}"),
        }
        std::process::exit(1);
    }
}

/// Parses the command line; a refused one is reported on one line. The
/// `migrate` subcommand is added here to the tree of `worker::commands`; it
/// reads only the database settings.
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
