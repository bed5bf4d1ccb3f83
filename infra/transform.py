"""Transform infra/template.yaml with the AWS SAM translator (offline) and print, per function, the
environment variables it gets and the IAM actions its role allows, as JSON. Used by tests/tests/infra.rs."""
import json
import os
import sys

import yaml
from samtranslator.translator.transform import transform


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


class OfflinePolicies:
    """SAM asks for AWS managed policy ARNs by name; answer without calling IAM."""

    def load(self):
        return {"AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}


def main(path):
    # The translator reads the region for pseudo parameters; no AWS call is made.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(path) as f:
        template = yaml.load(f, Loader=CfnLoader)
    # `sam build`/`sam package` replace the local CodeUri with an S3 location; do the same.
    template.get("Globals", {}).get("Function", {}).pop("CodeUri", None)
    for res in template["Resources"].values():
        if res["Type"] == "AWS::Serverless::Function":
            res["Properties"]["CodeUri"] = "s3://packaged/code.zip"
    params = {"SenderIdentity": "example.com", "SenderAddress": "rosterdrop@example.com", "AWS::Region": "us-east-1"}
    out = transform(template, params, OfflinePolicies())
    resources = out["Resources"]
    if "--tables" in sys.argv:
        # The tables' properties, for the tests that hold them to what the code uses.
        json.dump({n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::DynamoDB::Table"}, sys.stdout, indent=1, sort_keys=True)
        return
    if "--rules" in sys.argv:
        # EventBridge rules and the SES configuration set, for the delivery-tracking test.
        kinds = ("AWS::Events::Rule", "AWS::SES::ConfigurationSet", "AWS::SES::ConfigurationSetEventDestination")
        json.dump({n: r for n, r in resources.items() if r["Type"] in kinds}, sys.stdout, indent=1, sort_keys=True)
        return
    if "--sftp" in sys.argv:
        # The optional SFTP drop: its resources with their conditions, and the conditions.
        kinds = ("AWS::Transfer::Server", "AWS::Transfer::User")
        picked = {n: r for n, r in resources.items() if r["Type"] in kinds or n.startswith("Sftp")}
        json.dump({"resources": picked, "conditions": out.get("Conditions", {}), "outputs": out.get("Outputs", {})}, sys.stdout, indent=1, sort_keys=True)
        return
    if "--bucket" in sys.argv:
        # The bucket's lifecycle rules and policy statements, for the storage tests.
        bucket = next(r for r in resources.values() if r["Type"] == "AWS::S3::Bucket")
        policy = next(r for r in resources.values() if r["Type"] == "AWS::S3::BucketPolicy")
        json.dump({
            "lifecycle": bucket["Properties"]["LifecycleConfiguration"]["Rules"],
            "statements": policy["Properties"]["PolicyDocument"]["Statement"],
            "parameters": out.get("Parameters", {}),
            "roles": sorted(n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"),
        }, sys.stdout, indent=1, sort_keys=True)
        return
    report = {}
    for name, res in resources.items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        props = res["Properties"]
        role = resources[props["Role"]["Fn::GetAtt"][0]]
        actions = set()
        prefixes = set()
        managed = []
        for policy in role["Properties"].get("Policies", []):
            for stmt in policy["PolicyDocument"]["Statement"]:
                acts = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                # SAM's own grant for the on-failure destination is wiring, not something the code calls.
                if policy["PolicyName"].endswith("DestinationPolicy") or "EventInvokeConfig" in policy["PolicyName"]:
                    continue
                actions.update(acts)
                if "s3:ListBucket" in acts:
                    # Where it may list: the statement's s3:prefix condition (none: anywhere).
                    like = stmt.get("Condition", {}).get("StringLike", {}).get("s3:prefix", "*")
                    prefixes.update(like if isinstance(like, list) else [like])
        managed = role["Properties"].get("ManagedPolicyArns", [])
        report[name] = {
            "env": sorted(props.get("Environment", {}).get("Variables", {}).keys()),
            "actions": sorted(actions),
            "list_prefixes": sorted(prefixes),
            "managed_policies": managed,
            "runtime": props.get("Runtime"),
            "architectures": props.get("Architectures"),
            "policy_names": [p["PolicyName"] for p in role["Properties"].get("Policies", [])],
        }
    json.dump(report, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "infra/template.yaml")
