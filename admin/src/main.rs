//! `admin`: serves the admin API, or manages its tokens.

use std::sync::Arc;

use admin::{
    broker::Broker,
    config::{Command, Config, TokensCommand},
    jobs::Jobs,
    tokens, Admin, AppState,
};
use clap::Parser as _;

/// Database connections of the admin service.
const POOL_SIZE: u32 = 8;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let _telemetry = shared::telemetry::init(&config.log, "clerk-admin");
    if let Err(error) = run(config).await {
        eprintln!("admin: {error:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let pool = shared::db::connect_and_migrate(
        &config.database.database_url,
        POOL_SIZE,
        config.database.patience(),
    )
    .await?;
    match &config.command {
        Some(Command::Tokens { command }) => {
            let result = tokens_command(&pool, command).await;
            pool.close().await;
            result
        }
        None => serve(&config, pool).await,
    }
}

async fn tokens_command(pool: &sqlx::PgPool, command: &TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create { name } => println!("{}", tokens::create(pool, name).await?),
        TokensCommand::Revoke { name } => {
            tokens::revoke(pool, name).await?;
            println!("revoked {name}");
        }
        TokensCommand::List => {
            for token in tokens::list(pool).await? {
                let revoked = token
                    .revoked_at
                    .map_or_else(|| "active".to_owned(), |at| format!("revoked {at}"));
                println!("{}\tcreated {}\t{revoked}", token.name, token.created_at);
            }
        }
    }
    Ok(())
}

async fn serve(config: &Config, pool: sqlx::PgPool) -> anyhow::Result<()> {
    let state = AppState {
        pool,
        clerk: config.clerk()?,
        catalog: Arc::new(config.catalog()?),
        jobs: Jobs::default(),
        broker: Broker::new(config.amqp.clone()),
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let admin = Admin::build(listener, state);
    tracing::info!(addr = %admin.local_addr()?, "admin ready");
    admin.run(shared::shutdown::on_signal()).await?;
    Ok(())
}
