//! `ferry run`: every subscription of the config as its own pipeline, until
//! SIGTERM or SIGINT.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::{self, PipelineSpec};

/// Runs all pipelines until `cancel` fires. A pipeline that stops for good
/// does not stop the others. Returns the number of pipelines that stopped
/// with an error.
pub async fn run(config: Config, cancel: CancellationToken) -> usize {
    let mut pipelines = JoinSet::new();
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
        pipelines.spawn(pipeline::run(spec, cancel.clone()));
    }
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
    failed
}
