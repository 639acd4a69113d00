//! `GET /metrics`: Prometheus text format.

use std::time::Duration;

use axum::{extract::State, http::header, response::IntoResponse};

use crate::AppState;

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    let unpublished = tokio::time::timeout(
        QUERY_TIMEOUT,
        sqlx::query_as::<_, (i64, f64)>(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(e.received_at)), 0)::float8 \
             FROM webhook_outbox o JOIN webhook_events e ON e.id = o.event_id",
        )
        .fetch_one(&state.pool),
    )
    .await
    .ok()
    .and_then(Result::ok);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(unpublished),
    )
}
