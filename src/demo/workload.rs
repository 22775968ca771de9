//! A small shop at work: new customers sign up, they place orders, orders
//! go pending → paid → shipped, and now and then an order is cancelled or a
//! customer leaves. Each step is one transaction on the service that owns
//! the row.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::setup::Databases;

const FIRST_NAMES: [&str; 10] =
    ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tony"];
const LAST_NAMES: [&str; 10] =
    ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Hoare"];
const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "JP", "BR", "IN", "NL", "SE"];

/// What the shop knows about its rows, to pick the next step.
#[derive(Debug)]
pub struct Shop {
    rng: Rng,
    next_customer: i64,
    customers: Vec<i64>,
    next_order: i64,
    /// Orders not yet shipped, with their status.
    open_orders: Vec<(i64, Status)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Paid,
}

/// One transaction of the workload.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    NewCustomer { id: i64, name: String, email: String, country: &'static str },
    NewOrder { id: i64, customer_id: i64, cents: i64 },
    Pay { id: i64 },
    Ship { id: i64 },
    CancelOrder { id: i64 },
    RemoveCustomer { id: i64 },
}

impl Shop {
    pub fn new(seed: u64) -> Shop {
        Shop {
            rng: Rng(seed | 1),
            next_customer: 1,
            customers: Vec::new(),
            next_order: 1,
            open_orders: Vec::new(),
        }
    }

    /// Some customers and orders to start with, before ferry runs (so its
    /// initial copy has something to copy).
    pub async fn seed(&mut self, db: &Databases, customers: usize, orders: usize) -> anyhow::Result<()> {
        for _ in 0..customers {
            let step = self.new_customer();
            self.apply(db, step).await?;
        }
        for _ in 0..orders {
            if let Some(step) = self.new_order() {
                self.apply(db, step).await?;
            }
        }
        Ok(())
    }

    /// Runs `per_second` transactions a second (at least one) until `stop`
    /// fires, describing each on `last_change`. Returns how many ran.
    pub async fn run(
        mut self,
        db: Databases,
        per_second: u32,
        last_change: watch::Sender<String>,
        stop: CancellationToken,
    ) -> anyhow::Result<u64> {
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut transactions = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(transactions),
                _ = ticks.tick() => {}
            }
            let step = self.next_step();
            let description = step.describe();
            self.apply(&db, step).await?;
            transactions += 1;
            last_change.send_replace(description);
        }
    }

    /// Picks the next step, mostly orders moving along.
    fn next_step(&mut self) -> Step {
        let roll = self.rng.below(100);
        let step = match roll {
            0..20 => Some(self.new_customer()),
            20..50 => self.new_order(),
            50..90 => self.advance_order(),
            90..97 => self.cancel_order(),
            _ => self.remove_customer(),
        };
        step.unwrap_or_else(|| self.new_customer())
    }

    fn new_customer(&mut self) -> Step {
        let id = self.next_customer;
        self.next_customer += 1;
        self.customers.push(id);
        let first = FIRST_NAMES[self.rng.below(FIRST_NAMES.len())];
        let last = LAST_NAMES[self.rng.below(LAST_NAMES.len())];
        let email = format!("{}.{}{id}@example.com", first.to_lowercase(), last.to_lowercase());
        let country = COUNTRIES[self.rng.below(COUNTRIES.len())];
        Step::NewCustomer { id, name: format!("{first} {last}"), email, country }
    }

    fn new_order(&mut self) -> Option<Step> {
        let customer_id = *self.pick(self.customers.len()).map(|i| &self.customers[i])?;
        let id = self.next_order;
        self.next_order += 1;
        self.open_orders.push((id, Status::Pending));
        let cents = 500 + self.rng.below(50_000) as i64;
        Some(Step::NewOrder { id, customer_id, cents })
    }

    fn advance_order(&mut self) -> Option<Step> {
        let i = self.pick(self.open_orders.len())?;
        let (id, status) = self.open_orders[i];
        Some(match status {
            Status::Pending => {
                self.open_orders[i].1 = Status::Paid;
                Step::Pay { id }
            }
            Status::Paid => {
                self.open_orders.swap_remove(i);
                Step::Ship { id }
            }
        })
    }

    fn cancel_order(&mut self) -> Option<Step> {
        let i = self.pick(self.open_orders.len())?;
        let (id, _) = self.open_orders.swap_remove(i);
        Some(Step::CancelOrder { id })
    }

    fn remove_customer(&mut self) -> Option<Step> {
        let i = self.pick(self.customers.len())?;
        let id = self.customers.swap_remove(i);
        Some(Step::RemoveCustomer { id })
    }

    fn pick(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.rng.below(len))
    }

    async fn apply(&self, db: &Databases, step: Step) -> anyhow::Result<()> {
        let result = match &step {
            Step::NewCustomer { id, name, email, country } => {
                db.customers
                    .execute(
                        "INSERT INTO customers (id, name, email, country, created) VALUES ($1, $2, $3, $4, now())",
                        &[id, name, email, country],
                    )
                    .await
            }
            Step::NewOrder { id, customer_id, cents } => {
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                db.orders
                    .execute(
                        "INSERT INTO orders (id, customer_id, amount, status, created)
                         VALUES ($1, $2, $3::text::numeric, 'pending', now())",
                        &[id, customer_id, &amount],
                    )
                    .await
            }
            Step::Pay { id } => db.orders.execute("UPDATE orders SET status = 'paid' WHERE id = $1", &[id]).await,
            Step::Ship { id } => {
                db.orders.execute("UPDATE orders SET status = 'shipped' WHERE id = $1", &[id]).await
            }
            Step::CancelOrder { id } => db.orders.execute("DELETE FROM orders WHERE id = $1", &[id]).await,
            Step::RemoveCustomer { id } => {
                db.customers.execute("DELETE FROM customers WHERE id = $1", &[id]).await
            }
        };
        result.map_err(|e| anyhow::anyhow!("workload: {}: {e}", step.describe()))?;
        Ok(())
    }
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::NewCustomer { id, name, country, .. } => format!("new customer {id} ({name}, {country})"),
            Step::NewOrder { id, customer_id, cents } => {
                format!("new order {id} for customer {customer_id}, {}.{:02}", cents / 100, cents % 100)
            }
            Step::Pay { id } => format!("order {id} pending → paid"),
            Step::Ship { id } => format!("order {id} paid → shipped"),
            Step::CancelOrder { id } => format!("order {id} cancelled (deleted)"),
            Step::RemoveCustomer { id } => format!("customer {id} left (deleted)"),
        }
    }
}

/// xorshift64*: enough randomness for a demo, and the same run every time.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_move_from_pending_to_paid_to_shipped_and_are_then_left_alone() {
        let mut shop = Shop::new(7);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..2000 {
            match shop.next_step() {
                Step::NewOrder { id, .. } => assert_eq!(seen.insert(id, "pending"), None),
                Step::Pay { id } => assert_eq!(seen.insert(id, "paid"), Some("pending")),
                Step::Ship { id } => assert_eq!(seen.insert(id, "shipped"), Some("paid")),
                Step::CancelOrder { id } => {
                    let before = seen.insert(id, "cancelled");
                    assert!(matches!(before, Some("pending" | "paid")), "{id}: {before:?}");
                }
                Step::NewCustomer { .. } | Step::RemoveCustomer { .. } => {}
            }
        }
        let shipped = seen.values().filter(|s| **s == "shipped").count();
        assert!(shipped > 100, "only {shipped} orders shipped");
    }
}
