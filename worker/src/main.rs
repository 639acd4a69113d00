use clap::Parser;
use worker::{
    config::{Command, Config},
    Worker,
};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    shared::telemetry::init(&config.log);
    let result = match config.command.clone().unwrap_or(Command::Run) {
        Command::Run => run(&config).await,
    };
    if let Err(error) = result {
        tracing::error!(error.message = %format!("{error:#}"), "worker stopped");
        eprintln!("worker: {error:#}");
        std::process::exit(1);
    }
}

async fn run(config: &Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.ops_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.ops_addr))?;
    let worker = Worker::build(config.settings(), listener).await?;
    tracing::info!(ops_addr = %worker.ops_addr()?, "worker ready");
    worker.run(shared::shutdown::on_signal()).await?;
    Ok(())
}
