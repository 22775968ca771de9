//! The daemon's HTTP endpoints on `[server] listen`: `/metrics`,
//! `/healthz`, `/readyz` and `/status`.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr} ([server] listen in the config): {error}; \
         choose a free address or stop what holds it"
    )]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("the HTTP server stopped: {0}")]
    Serve(std::io::Error),
}

/// Binds `[server] listen`, so that `ferry run` fails at once when it
/// cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|error| ServerError::Bind { addr, error })
}

/// The endpoints' routes.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(metrics)
}

/// How long requests under way may take to finish once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the endpoints on `listener` until `stop` fires, then lets the
/// requests under way finish for up to [`SHUTDOWN_GRACE`]: a client that
/// stalls in the middle of one would otherwise hold the exit for ever.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    let stopping = stop.clone();
    let server = axum::serve(listener, router(metrics))
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .into_future();
    let grace_over = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.map_err(ServerError::Serve),
        () = grace_over => {
            tracing::info!("HTTP requests still open {}s after stopping are cut off", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    }
}

async fn metrics_text(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
}

/// The process is serving: nothing here depends on a database, so a source
/// or target that is down never gets ferry restarted.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Config loaded and pipelines started; 503 before that and while stopping.
async fn readyz(State(metrics): State<Metrics>) -> (StatusCode, &'static str) {
    if metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn status(State(metrics): State<Metrics>) -> impl IntoResponse {
    Json(metrics.status())
}
