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
    let index = |name: &str, pk: &str, sk: &str, projection: Projection| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(KeySchemaElement::builder().attribute_name(pk).key_type(KeyType::Hash).build().map_err(build_err)?)
            .key_schema(KeySchemaElement::builder().attribute_name(sk).key_type(KeyType::Range).build().map_err(build_err)?)
            .projection(projection)
            .build()
            .map_err(build_err)
    };
    let attr =
        |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().map_err(build_err);
    let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(build_err);
    // Directory: `pk` + `sk`, no index (a created user is one write unit).
    let directory_table = client
        .create_table()
        .table_name(directory)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?);
    // Jobs: by tenant for `status` and due invites (`JOBS_GSI_ATTRIBUTES`); open jobs, oldest first.
    let jobs_table = client
        .create_table()
        .table_name(jobs)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("gsi1pk")?)
        .attribute_definitions(attr("gsi1sk")?)
        .attribute_definitions(attr("gsi2pk")?)
        .attribute_definitions(attr("gsi2sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .global_secondary_indexes(index(
            GSI,
            "gsi1pk",
            "gsi1sk",
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(JOBS_GSI_ATTRIBUTES.iter().map(|a| a.to_string()).collect()))
                .build(),
        )?)
        .global_secondary_indexes(index(
            OPEN_JOBS,
            "gsi2pk",
            "gsi2sk",
            Projection::builder().projection_type(ProjectionType::KeysOnly).build(),
        )?);
    for (table, create) in [(directory, directory_table), (jobs, jobs_table)] {
        match create.send().await {
            // Markers, claims and tombstones expire.
            Ok(_) => {
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
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(ddb_err("CreateTable")(e)),
        }
    }
    Ok(())
}
