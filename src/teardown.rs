//! `ferry drop`: removes what a subscription left on its source once it is
//! gone from the config. Removing a subscription from the config never
//! drops its slot by itself, so a typo in a config cannot throw away a
//! slot and the changes it holds.

use crate::config::{self, Config};
use crate::pg::PgError;
use crate::pg::conninfo::ConnInfo;
use crate::pg::names::quote_ident;
use crate::pg::replication::ReplicationClient;
use crate::pg::tls;

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "subscription {0:?} is still in the config: remove it there (and reload or restart ferry) before dropping its slot"
    )]
    StillConfigured(String),
    #[error("the config has several sources ({0}); say which one held the subscription with --source")]
    WhichSource(String),
    #[error("the config has no source named {0:?}")]
    UnknownSource(String),
    #[error("source {on}: there is no slot {slot}")]
    NoSlot { on: String, slot: String },
    #[error(
        "source {on}: slot {slot} is in use by process {pid}; is a ferry still running this subscription?"
    )]
    InUse { on: String, slot: String, pid: i32 },
    #[error("source: {0}")]
    Connect(Box<tls::SqlConnectError>),
    #[error("source: {context}: {source}")]
    Sql { context: &'static str, source: tokio_postgres::Error },
    #[error(transparent)]
    Pg(#[from] PgError),
}

/// What `ferry drop` removed.
#[derive(Debug)]
pub struct Dropped {
    pub source: String,
    pub slot: String,
    pub publication: Option<String>,
}

/// Drops the slot of the removed subscription `name` on its source (named
/// by `source`, or the config's only one), and the publication ferry made
/// for it when there is one.
pub async fn drop_subscription(
    config: &Config,
    name: &str,
    source: Option<&str>,
) -> Result<Dropped, DropError> {
    if config.subscriptions.iter().any(|s| s.name == name || s.slot == config::slot_name(name)) {
        return Err(DropError::StillConfigured(name.to_string()));
    }
    let (source_name, info) = pick_source(config, source)?;
    let slot = config::slot_name(name);
    let client = tls::connect_sql(info).await.map_err(|e| DropError::Connect(Box::new(e)))?;
    let sql_error = |context| move |source| DropError::Sql { context, source };
    let row = client
        .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .map_err(sql_error("looking up the slot"))?;
    let Some(row) = row else {
        return Err(DropError::NoSlot { on: source_name.to_string(), slot });
    };
    if let Some(pid) = row.get::<_, Option<i32>>(0) {
        return Err(DropError::InUse { on: source_name.to_string(), slot, pid });
    }
    ReplicationClient::connect(info).await?.drop_slot(&slot, false).await?;
    // The publication of the same name is the one ferry managed for it,
    // unless a configured subscription names it as its own.
    let in_use = config.subscriptions.iter().any(|s| s.publication == slot);
    let publication = client
        .query_opt("SELECT pubname::text FROM pg_publication WHERE pubname = $1", &[&slot])
        .await
        .map_err(sql_error("looking up the publication"))?
        .map(|row| row.get::<_, String>(0))
        .filter(|_| !in_use);
    if let Some(publication) = &publication {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
            .await
            .map_err(sql_error("dropping the publication"))?;
    }
    Ok(Dropped { source: source_name.to_string(), slot, publication })
}

/// Slots named like ferry's on the config's sources that no configured
/// subscription uses, as (source name, slot): left by subscriptions taken
/// out of the config, they keep WAL until `ferry drop` removes them.
/// Sources that cannot be asked are left out.
pub async fn forgotten_slots(config: &Config) -> Vec<(String, String)> {
    let mut forgotten = Vec::new();
    for (name, info) in &config.sources {
        if let Ok(client) = tls::connect_sql(info).await {
            forgotten.extend(
                forgotten_slots_on(config, name, &client).await.into_iter().map(|s| (name.clone(), s)),
            );
        }
    }
    forgotten
}

/// The forgotten slots (see [`forgotten_slots`]) on the source `source`,
/// asked over `client`; none when it cannot be asked.
pub async fn forgotten_slots_on(
    config: &Config,
    source: &str,
    client: &tokio_postgres::Client,
) -> Vec<String> {
    let Ok(rows) = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots
             WHERE slot_type = 'logical' AND NOT temporary AND database = current_database()
               AND slot_name LIKE 'ferry\\_%' ORDER BY 1",
            &[],
        )
        .await
    else {
        return Vec::new();
    };
    let slots = rows.iter().map(|row| row.get::<_, String>(0));
    slots.filter(|slot| !config.subscriptions.iter().any(|s| s.source == source && s.slot == *slot)).collect()
}

/// Says in the log which slots on the sources belong to no subscription.
pub async fn warn_about_forgotten_slots(config: Config) {
    for (source, slot) in forgotten_slots(&config).await {
        tracing::warn!(
            %source,
            %slot,
            "slot {slot} on source {source} belongs to no configured subscription: it keeps WAL until \
             `ferry drop SUBSCRIPTION --source {source}` removes it"
        );
    }
}

fn pick_source<'a>(config: &'a Config, wanted: Option<&str>) -> Result<(&'a str, &'a ConnInfo), DropError> {
    match wanted {
        Some(name) => config
            .sources
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| DropError::UnknownSource(name.to_string())),
        None if config.sources.len() == 1 => {
            let (name, info) = config.sources.iter().next().expect("one source");
            Ok((name.as_str(), info))
        }
        None => Err(DropError::WhichSource(config.sources.keys().cloned().collect::<Vec<_>>().join(", "))),
    }
}
