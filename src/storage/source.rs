//! The trades table the server builds from when it does not own it (`[source]`): which table
//! it is, which column holds the trade time (for pruning), and how its columns map onto ours
//! (applied by `trades::source`). The server never writes, compacts or expires it.

use serde::{Deserialize, Serialize};

/// `[source]`: the trades table to build from, and how its columns map onto ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Namespace of the table; unset means the catalog's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    pub table: String,
    /// The exchange of every trade, for tables without an exchange column.
    #[serde(default)]
    pub exchange: Option<String>,
    /// Fail the build on a row the mapping cannot read, instead of skipping it.
    #[serde(default)]
    pub strict: bool,
    #[serde(default)]
    pub columns: ColumnMap,
}

/// Names of the source's columns that hold our fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnMap {
    pub ts: String,
    pub price: String,
    pub quantity: String,
    pub trade_id: String,
    pub exchange: String,
    pub symbol: String,
    /// Text (`buy`/`sell`/`b`/`s`, any case) or a boolean `is_buyer_maker`; empty: no side.
    pub side: String,
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap {
            ts: "ts".into(),
            price: "price".into(),
            quantity: "quantity".into(),
            trade_id: "trade_id".into(),
            exchange: "exchange".into(),
            symbol: "symbol".into(),
            side: "side".into(),
        }
    }
}

impl SourceConfig {
    /// The source columns the mapping reads (the exchange column only without a constant).
    pub fn source_columns(&self) -> Vec<&str> {
        let c = &self.columns;
        let mut names = vec![
            c.ts.as_str(),
            c.price.as_str(),
            c.quantity.as_str(),
            c.trade_id.as_str(),
            c.symbol.as_str(),
        ];
        if self.exchange.is_none() {
            names.push(c.exchange.as_str());
        }
        if !c.side.is_empty() {
            names.push(c.side.as_str());
        }
        names
    }
}
