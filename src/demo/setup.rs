//! The demo's two services, their tables, and the ferry config that keeps
//! each one's copy of the other's table up to date.

use std::fmt::Write as _;
use std::path::Path;

use tokio_postgres::Client;

use crate::config::{Config, ConfigError};

use super::cluster::ClusterAddr;

pub const CUSTOMERS_DDL: &str = "CREATE TABLE customers (
    id bigint PRIMARY KEY, name text, email text, country text, created timestamptz)";
pub const ORDERS_DDL: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint, amount numeric(10,2), status text, created timestamptz)";

/// One service: a database named after it, on its own cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Customers,
    Orders,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Customers, Service::Orders];

    /// The service's name, which is also its database's and its own table's.
    pub fn name(self) -> &'static str {
        match self {
            Service::Customers => "customers",
            Service::Orders => "orders",
        }
    }

    /// The table the service owns.
    pub fn own_table_ddl(self) -> &'static str {
        match self {
            Service::Customers => CUSTOMERS_DDL,
            Service::Orders => ORDERS_DDL,
        }
    }

    /// The copy of the other service's table that it keeps.
    pub fn copy_table_ddl(self) -> &'static str {
        self.other().own_table_ddl()
    }

    pub fn other(self) -> Service {
        match self {
            Service::Customers => Service::Orders,
            Service::Orders => Service::Customers,
        }
    }
}

/// One direction of replication: a service's own table, copied into the
/// other service's database under the same name.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub table: &'static str,
    pub from: Service,
    pub to: Service,
    /// The columns the copy receives; `None` for all of them.
    pub columns: Option<&'static [&'static str]>,
    /// The rows the copy receives (an SQL condition); `None` for all.
    pub row_filter: Option<&'static str>,
}

/// The demo's replication, both ways: the orders service gets each
/// customer's id, name and country (not the email), and the customers
/// service gets only shipped orders. The config text and the consistency
/// check both follow these fields.
pub const FLOWS: [Flow; 2] = [
    Flow {
        table: "customers",
        from: Service::Customers,
        to: Service::Orders,
        columns: Some(&["id", "name", "country"]),
        row_filter: None,
    },
    Flow {
        table: "orders",
        from: Service::Orders,
        to: Service::Customers,
        columns: None,
        row_filter: Some("status = 'shipped'"),
    },
];

impl Flow {
    /// The subscription's name in the config (it also names the slot).
    pub fn subscription(&self) -> String {
        format!("{}-to-{}", self.from.name(), self.to.name())
    }

    /// The columns compared by the consistency check, as an SQL list.
    pub fn column_list(&self) -> String {
        match self.columns {
            Some(columns) => columns.join(", "),
            None => "*".to_string(),
        }
    }

    /// The source rows the copy should hold, as a query.
    pub fn source_query(&self) -> String {
        let filter = self.row_filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        format!("SELECT {} FROM {}{filter}", self.column_list(), self.table)
    }

    /// The copy's rows, as a query.
    pub fn copy_query(&self) -> String {
        format!("SELECT {} FROM {}", self.column_list(), self.table)
    }
}

/// One connection to each service's database.
pub struct Databases {
    pub customers: Client,
    pub orders: Client,
}

impl Databases {
    pub async fn connect(
        customers: &ClusterAddr,
        orders: &ClusterAddr,
    ) -> Result<Databases, tokio_postgres::Error> {
        Ok(Databases {
            customers: customers.connect(Service::Customers.name()).await?,
            orders: orders.connect(Service::Orders.name()).await?,
        })
    }

    pub fn of(&self, service: Service) -> &Client {
        match service {
            Service::Customers => &self.customers,
            Service::Orders => &self.orders,
        }
    }
}

/// Creates the service's database, with its own table and its copy of the
/// other service's.
pub async fn create_database(cluster: &ClusterAddr, service: Service) -> Result<(), tokio_postgres::Error> {
    let admin = cluster.connect("postgres").await?;
    admin.batch_execute(&format!("CREATE DATABASE {}", service.name())).await?;
    let db = cluster.connect(service.name()).await?;
    create_tables(&db, service).await
}

/// Creates each service's own table and its copy of the other's.
async fn create_tables(db: &Client, service: Service) -> Result<(), tokio_postgres::Error> {
    db.batch_execute(&format!("{};\n{};", service.own_table_ddl(), service.copy_table_ddl())).await
}

/// The ferry config for the demo, as TOML: each service is a source (of its
/// own table) and a target (for its copy of the other's).
pub fn config_toml(customers: &ClusterAddr, orders: &ClusterAddr) -> String {
    let addr = |service: Service| match service {
        Service::Customers => customers,
        Service::Orders => orders,
    };
    let mut text = String::new();
    for service in Service::ALL {
        // Quoted for TOML: the socket folder's name is the system's.
        let url = toml::Value::String(addr(service).url(service.name())).to_string();
        let name = service.name();
        let _ = write!(text, "[sources.{name}]\nurl = {url}\n\n[targets.{name}]\nurl = {url}\n\n");
    }
    for flow in FLOWS {
        text.push_str(&subscription_toml(&flow));
    }
    text
}

fn subscription_toml(flow: &Flow) -> String {
    let mut text = format!(
        "[[subscriptions]]\nname = \"{}\"\nsource = \"{}\"\ntarget = \"{}\"\n\n\
         [[subscriptions.tables]]\nfrom = \"public.{table}\"\nto = \"public.{table}\"\n",
        flow.subscription(),
        flow.from.name(),
        flow.to.name(),
        table = flow.table,
    );
    if let Some(columns) = flow.columns {
        let quoted: Vec<String> = columns.iter().map(|c| format!("{c:?}")).collect();
        let _ = writeln!(text, "columns = [{}]", quoted.join(", "));
    }
    if let Some(filter) = flow.row_filter {
        let _ = writeln!(text, "where = {filter:?}");
    }
    text.push('\n');
    text
}

/// Validates the generated config exactly as `ferry run` would a file.
pub fn parse_config(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("<ferry demo>"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn addr(name: &str, port: u16) -> ClusterAddr {
        ClusterAddr { name: name.into(), port, socket_dir: PathBuf::from("/tmp") }
    }

    #[test]
    fn the_generated_config_is_valid_and_goes_both_ways() {
        let text = config_toml(&addr("customers", 5001), &addr("orders", 5002));
        let config = parse_config(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let routes: Vec<(String, String, String)> = config
            .subscriptions
            .iter()
            .map(|s| (s.source.clone(), s.target.clone(), s.tables[0].to.name.clone()))
            .collect();
        assert_eq!(
            routes,
            [
                ("customers".into(), "orders".into(), "customers".into()),
                ("orders".into(), "customers".into(), "orders".into())
            ]
        );
    }

    #[test]
    fn columns_and_a_row_filter_become_keys_of_the_table_entry() {
        let flow = Flow {
            columns: Some(&["id", "customer_id", "status"]),
            row_filter: Some("status = 'shipped'"),
            ..FLOWS[1]
        };
        let text = subscription_toml(&flow);
        assert!(text.contains("\ncolumns = [\"id\", \"customer_id\", \"status\"]\n"), "{text}");
        assert!(text.contains("\nwhere = \"status = 'shipped'\"\n"), "{text}");
        assert_eq!(
            flow.source_query(),
            "SELECT id, customer_id, status FROM orders WHERE status = 'shipped'"
        );
        assert_eq!(flow.copy_query(), "SELECT id, customer_id, status FROM orders");
    }
}
