use clap::Parser;
use ingress::{config::Config, Ingress};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let _telemetry = shared::telemetry::init(&config.log, "clerk-ingress");
    if let Err(error) = run(config).await {
        tracing::error!(error.message = %format!("{error:#}"), "ingress stopped");
        eprintln!("ingress: {error:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let settings = config.settings()?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let ops_listener = tokio::net::TcpListener::bind(config.ops_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (INGRESS_OPS_ADDR): {e}",
                config.ops_addr
            )
        })?;
    let ingress = Ingress::build(settings, listener, ops_listener).await?;
    ingress.run(shared::shutdown::on_signal()).await?;
    Ok(())
}
