use clap::Parser;
use worker::config::{Command, Config};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    shared::telemetry::init(&config.log);
    let result = match config.command.clone().unwrap_or(Command::Run) {
        Command::Run => {
            worker::run(
                &config.database.database_url,
                config.database.patience(),
                &config.amqp.amqp_url,
                &config.amqp.amqp_prefix,
                shared::shutdown::on_signal(),
            )
            .await
        }
    };
    if let Err(error) = result {
        tracing::error!(error.message = %error, "worker stopped");
        eprintln!("worker: {error}");
        std::process::exit(1);
    }
}
