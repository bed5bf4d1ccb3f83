//! The tables and indexes, created where missing (local stack and tests; `infra/` in AWS).

use super::ext::*;
use super::*;
use crate::error::Result;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TimeToLiveSpecification,
};

/// Create the directory and jobs tables if missing (local stack and tests; infra/ does it in AWS).
pub async fn ensure_tables(client: &Client, directory: &str, jobs: &str) -> Result<()> {
    for table in [directory, jobs] {
        let index = |name: &str, pk: &str, sk: &str, projection: Projection| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(KeySchemaElement::builder().attribute_name(pk).key_type(KeyType::Hash).build().map_err(build_err)?)
                .key_schema(KeySchemaElement::builder().attribute_name(sk).key_type(KeyType::Range).build().map_err(build_err)?)
                .projection(projection)
                .build()
                .map_err(build_err)
        };
        // Users: keys + status (org user counts, replace mode's diff). Jobs: whole items for `status`.
        let gsi = if table == jobs {
            index(GSI, "gsi1pk", "gsi1sk", Projection::builder().projection_type(ProjectionType::All).build())?
        } else {
            index(
                GSI,
                "gsi1pk",
                "gsi1sk",
                Projection::builder().projection_type(ProjectionType::Include).non_key_attributes("status").build(),
            )?
        };
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().map_err(build_err)
        };
        let res = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("gsi1pk")?)
            .attribute_definitions(attr("gsi1sk")?)
            .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().map_err(build_err)?)
            .global_secondary_indexes(gsi);
        // Jobs: a sparse index of open jobs, oldest first (the job-age alarm).
        let res = if table == jobs {
            res.attribute_definitions(attr("gsi2pk")?).attribute_definitions(attr("gsi2sk")?).global_secondary_indexes(index(
                OPEN_JOBS,
                "gsi2pk",
                "gsi2sk",
                Projection::builder().projection_type(ProjectionType::KeysOnly).build(),
            )?)
        } else {
            res
        };
        let res = res.send().await;
        match res {
            Ok(_) => {
                if table == jobs {
                    client
                        .update_time_to_live()
                        .table_name(table)
                        .time_to_live_specification(
                            TimeToLiveSpecification::builder().attribute_name("ttl").enabled(true).build().map_err(build_err)?,
                        )
                        .send()
                        .await
                        .map_err(ddb_err("UpdateTimeToLive"))?;
                }
            }
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(ddb_err("CreateTable")(e)),
        }
    }
    Ok(())
}
