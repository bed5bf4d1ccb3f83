#![allow(clippy::unwrap_used)] // test code: a poisoned lock is a failed test
//! What DynamoDB calls cost: every request asks for its consumed capacity on its way out, and
//! the units are added up (the end-to-end cost tests and `make bench` read them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counts write capacity and writes per key of every DynamoDB call, by asking each write for its
/// consumed capacity (`ReturnConsumedCapacity`) on its way out.
#[derive(Debug, Default, Clone)]
pub struct Capacity(pub Arc<Mutex<CapacityCounts>>);

#[derive(Debug, Default)]
pub struct CapacityCounts {
    pub write_units: f64,
    pub read_units: f64,
    /// Writes per item (`pk` and, on the directory table, `sk`).
    pub writes_per_key: HashMap<String, u32>,
    /// (write units, read units) by table.
    pub by_table: HashMap<String, (f64, f64)>,
}

impl Capacity {
    /// (write units, read units) consumed so far.
    pub fn units(&self) -> (f64, f64) {
        let c = self.0.lock().unwrap();
        (c.write_units, c.read_units)
    }
    /// (write units, read units) consumed so far on one table.
    pub fn table_units(&self, table: &str) -> (f64, f64) {
        self.0.lock().unwrap().by_table.get(table).copied().unwrap_or_default()
    }
}

mod intercept {
    use super::Capacity;
    use aws_sdk_dynamodb::operation::{
        batch_get_item::BatchGetItemOutput, delete_item::DeleteItemOutput, get_item::GetItemOutput, put_item::PutItemOutput,
        query::QueryOutput, transact_write_items::TransactWriteItemsOutput, update_item::UpdateItemOutput,
    };
    use aws_smithy_runtime_api::box_error::BoxError;
    use aws_smithy_runtime_api::client::interceptors::Intercept;
    use aws_smithy_runtime_api::client::interceptors::context::{BeforeTransmitInterceptorContextMut, FinalizerInterceptorContextRef};
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::config_bag::ConfigBag;

    impl Intercept for Capacity {
        fn name(&self) -> &'static str {
            "consumed-capacity"
        }
        // Before signing: the body is final JSON and the signature will cover the change.
        fn modify_before_signing(
            &self,
            ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let req = ctx.request_mut();
            let target = req.headers().get("x-amz-target").unwrap_or_default().to_string();
            let Some(op) = target.strip_prefix("DynamoDB_20120810.") else { return Ok(()) };
            let Some(body) = req.body().bytes() else { return Ok(()) };
            let mut json: serde_json::Value = serde_json::from_slice(body)?;
            json["ReturnConsumedCapacity"] = "TOTAL".into();
            let mut keys = Vec::new();
            // An item is its pk and, on the directory table, its sk.
            let key = |v: &serde_json::Value| v["pk"]["S"].as_str().map(|pk| format!("{pk} {}", v["sk"]["S"].as_str().unwrap_or("")));
            match op {
                "PutItem" => keys.extend(key(&json["Item"])),
                "UpdateItem" | "DeleteItem" => keys.extend(key(&json["Key"])),
                "TransactWriteItems" => {
                    for item in json["TransactItems"].as_array().into_iter().flatten() {
                        for kind in ["Put", "Update", "Delete"] {
                            let v = &item[kind];
                            keys.extend(key(&v["Item"]).or_else(|| key(&v["Key"])));
                        }
                    }
                }
                _ => {}
            }
            {
                let mut c = self.0.lock().unwrap();
                for k in keys {
                    *c.writes_per_key.entry(k).or_default() += 1;
                }
            }
            let bytes = serde_json::to_vec(&json)?;
            req.headers_mut().insert("content-length", bytes.len().to_string());
            *req.body_mut() = SdkBody::from(bytes);
            Ok(())
        }
        fn read_after_execution(
            &self,
            ctx: &FinalizerInterceptorContextRef<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let Some(Ok(out)) = ctx.output_or_error() else { return Ok(()) };
            let units = |c: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>| c.and_then(|c| c.capacity_units()).unwrap_or(0.0);
            let (w, r) = if let Some(o) = out.downcast_ref::<PutItemOutput>() {
                (units(o.consumed_capacity()), 0.0)
            } else if let Some(o) = out.downcast_ref::<UpdateItemOutput>() {
                (units(o.consumed_capacity()), 0.0)
            } else if let Some(o) = out.downcast_ref::<DeleteItemOutput>() {
                (units(o.consumed_capacity()), 0.0)
            } else if let Some(o) = out.downcast_ref::<TransactWriteItemsOutput>() {
                (o.consumed_capacity().iter().map(|c| units(Some(c))).sum(), 0.0)
            } else if let Some(o) = out.downcast_ref::<BatchGetItemOutput>() {
                (0.0, o.consumed_capacity().iter().map(|c| units(Some(c))).sum())
            } else if let Some(o) = out.downcast_ref::<GetItemOutput>() {
                (0.0, units(o.consumed_capacity()))
            } else if let Some(o) = out.downcast_ref::<QueryOutput>() {
                (0.0, units(o.consumed_capacity()))
            } else {
                (0.0, 0.0)
            };
            let tables: Vec<String> = if let Some(o) = out.downcast_ref::<PutItemOutput>() {
                o.consumed_capacity().and_then(|c| c.table_name()).map(str::to_string).into_iter().collect()
            } else if let Some(o) = out.downcast_ref::<UpdateItemOutput>() {
                o.consumed_capacity().and_then(|c| c.table_name()).map(str::to_string).into_iter().collect()
            } else if let Some(o) = out.downcast_ref::<BatchGetItemOutput>() {
                o.consumed_capacity().iter().filter_map(|c| c.table_name()).map(str::to_string).collect()
            } else if let Some(o) = out.downcast_ref::<GetItemOutput>() {
                o.consumed_capacity().and_then(|c| c.table_name()).map(str::to_string).into_iter().collect()
            } else if let Some(o) = out.downcast_ref::<QueryOutput>() {
                o.consumed_capacity().and_then(|c| c.table_name()).map(str::to_string).into_iter().collect()
            } else {
                Vec::new()
            };
            let mut c = self.0.lock().unwrap();
            c.write_units += w;
            c.read_units += r;
            // Single-table calls by their table (transactions span tables: counted in the totals only).
            if let [table] = tables.as_slice() {
                let entry = c.by_table.entry(table.clone()).or_default();
                entry.0 += w;
                entry.1 += r;
            }
            Ok(())
        }
    }
}
