//! `ferry run`: every subscription of the config as its own pipeline, until
//! SIGTERM or SIGINT, with each pipeline's slot measured and a summary
//! logged once a minute.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::pipeline::{self, PipelineSpec};

/// How often each pipeline's summary line is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Runs all pipelines until `cancel` fires, with metrics nobody reads.
/// Returns the number of pipelines that stopped with an error.
pub async fn run(config: Config, cancel: CancellationToken) -> usize {
    run_with(config, &Metrics::new(), cancel).await
}

/// Runs all pipelines until `cancel` fires, reporting to `metrics` (which
/// is ready once every pipeline has started, and not ready again once
/// stopping). A pipeline that stops for good does not stop the others.
/// Returns the number of pipelines that stopped with an error.
pub async fn run_with(config: Config, metrics: &Metrics, cancel: CancellationToken) -> usize {
    let mut pipelines = JoinSet::new();
    let mut background = JoinSet::new();
    for subscription in &config.subscriptions {
        let spec = PipelineSpec {
            subscription: subscription.clone(),
            source: config.sources[&subscription.source].clone(),
            target: config.targets[&subscription.target].clone(),
        };
        tracing::info!(
            subscription = %subscription.name,
            source = %spec.source,
            target = %spec.target,
            tables = subscription.tables.len(),
            "starting pipeline"
        );
        let pipeline_metrics = metrics.pipeline(subscription);
        background.spawn(metrics::watch_slot(
            spec.source.clone(),
            subscription.slot.clone(),
            pipeline_metrics.clone(),
            cancel.clone(),
        ));
        pipelines.spawn(pipeline::run(spec, pipeline_metrics, cancel.clone()));
    }
    background.spawn(metrics::log_summaries(metrics.clone(), SUMMARY_INTERVAL, cancel.clone()));
    metrics.set_ready(true);
    let stopping = (metrics.clone(), cancel.clone());
    background.spawn(async move {
        stopping.1.cancelled().await;
        stopping.0.set_ready(false);
    });
    let mut failed = 0;
    while let Some(result) = pipelines.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(_)) => failed += 1, // already logged by the pipeline
            Err(panic) => {
                tracing::error!("a pipeline task panicked: {panic}");
                failed += 1;
            }
        }
    }
    metrics.set_ready(false);
    background.shutdown().await;
    failed
}
