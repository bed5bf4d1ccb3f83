"""End-to-end check of the local AWS stack (scripts/stack.sh up first).

Run with the stack's venv: .local/venv/bin/python scripts/check_stack.py
Talks to 127.0.0.1 only. Prints one line per check and exits non-zero on the first failure.
"""

import base64
import json
import os
import sys
import time
import urllib.request
import uuid
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

LOCALSTACK = os.environ.get("LOCALSTACK_URL", "http://127.0.0.1:4566")
DYNAMODB = os.environ.get("DYNAMODB_URL", "http://127.0.0.1:8000")
REGION = "eu-west-1"
RUN = uuid.uuid4().hex[:8]


def client(service, endpoint=LOCALSTACK):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def ok(what):
    print(f"ok   {what}")


def expect_error(call, code, status=400):
    try:
        call()
    except ClientError as e:
        err, http = e.response["Error"], e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert err["Code"] == code and http == status, (err, http)
        return err
    raise AssertionError(f"expected {code}, call succeeded")


def sent_emails():
    with urllib.request.urlopen(f"{LOCALSTACK}/_aws/ses", timeout=5) as r:
        return json.load(r)["messages"]


def main():
    s3, sqs = client("s3"), client("sqs")
    ses, sesv2 = client("ses"), client("sesv2")
    ddb = client("dynamodb", DYNAMODB)

    # S3 put/get
    bucket = f"check-{RUN}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello"
    ok("S3 put/get")

    # SQS + S3 -> SQS notification
    queue_url = sqs.create_queue(QueueName=f"check-{RUN}")["QueueUrl"]
    assert queue_url.startswith("http://127.0.0.1:4566/"), queue_url
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    ok(f"SQS create queue ({queue_url})")
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    s3.put_object(Bucket=bucket, Key="uploads/roster.csv", Body=b"a,b\n1,2\n")
    keys, deadline = [], time.time() + 20
    while "uploads/roster.csv" not in keys and time.time() < deadline:
        for m in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2).get("Messages", []):
            body = json.loads(m["Body"])
            keys += [r["s3"]["object"]["key"] for r in body.get("Records", [])]
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    assert "uploads/roster.csv" in keys, keys
    ok("S3 -> SQS ObjectCreated notification delivered")

    # SES v1 verification counts for SES v2
    v1_sender = f"v1-{RUN}@example.com"
    ses.verify_email_identity(EmailAddress=v1_sender)
    ok("SES v1 VerifyEmailIdentity")
    v2_sender = f"v2-{RUN}@example.com"
    created = sesv2.create_email_identity(EmailIdentity=v2_sender)
    assert created["IdentityType"] == "EMAIL_ADDRESS" and created["VerifiedForSendingStatus"], created
    got = sesv2.get_email_identity(EmailIdentity=v1_sender)
    assert got["VerifiedForSendingStatus"] and got["IdentityType"] == "EMAIL_ADDRESS", got
    names = [i["IdentityName"] for i in sesv2.list_email_identities()["EmailIdentities"]]
    assert v1_sender in names and v2_sender in names, names
    assert v2_sender in ses.list_identities()["Identities"]
    err = expect_error(lambda: sesv2.create_email_identity(EmailIdentity=v2_sender), "AlreadyExistsException")
    ok(f"SES v2 Create/Get/ListEmailIdentities, shared with v1 (duplicate: {err['Code']})")

    # SES v2 SendEmail, raw MIME with an attachment
    msg = MIMEMultipart()
    msg["Subject"] = f"Roster {RUN}"
    msg["From"] = f"Rosterdrop <{v1_sender}>"
    msg["To"] = "coach@example.org"
    msg.attach(MIMEText("Roster attached.", "plain"))
    attachment = MIMEApplication(b"name,team\nAda,Blue\n", Name="roster.csv")
    attachment["Content-Disposition"] = 'attachment; filename="roster.csv"'
    msg.attach(attachment)
    raw = msg.as_string()
    for sender in (v1_sender, v2_sender):
        message_id = sesv2.send_email(
            FromEmailAddress=sender,
            Destination={"ToAddresses": ["coach@example.org"]},
            Content={"Raw": {"Data": raw.encode()}},
        )["MessageId"]
        [stored] = [m for m in sent_emails() if m["Id"] == message_id]
        assert stored["RawData"] == raw and stored["Source"] == sender, stored
        assert base64.b64encode(b"name,team\nAda,Blue\n").decode() in stored["RawData"]
    ok("SES v2 SendEmail Raw with attachment, from v1- and v2-verified senders, at /_aws/ses")
    print("     /_aws/ses message:", json.dumps(stored)[:300] + " ...")

    # SES v2 SendEmail, simple content
    message_id = sesv2.send_email(
        FromEmailAddress=v2_sender,
        Destination={"ToAddresses": ["coach@example.org"]},
        Content={"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}},
    )["MessageId"]
    [stored] = [m for m in sent_emails() if m["Id"] == message_id]
    assert stored["Subject"] == "Hi" and stored["Body"]["text_part"] == "Hello", stored
    ok("SES v2 SendEmail Simple at /_aws/ses")

    # unverified sender rejected
    err = expect_error(
        lambda: sesv2.send_email(
            FromEmailAddress=f"nobody-{RUN}@example.net",
            Destination={"ToAddresses": ["coach@example.org"]},
            Content={"Raw": {"Data": raw.encode()}},
        ),
        "MessageRejected",
    )
    ok(f"SES v2 unverified sender rejected: {err['Code']}: {err['Message']}")

    sesv2.delete_email_identity(EmailIdentity=v2_sender)
    expect_error(lambda: sesv2.get_email_identity(EmailIdentity=v2_sender), "NotFoundException", 404)
    ok("SES v2 DeleteEmailIdentity")

    # DynamoDB Local: conditional put
    table = f"check-{RUN}"
    ddb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    put = lambda: ddb.put_item(  # noqa: E731
        TableName=table,
        Item={"pk": {"S": "upload-1"}},
        ConditionExpression="attribute_not_exists(pk)",
    )
    put()
    expect_error(put, "ConditionalCheckFailedException")
    ddb.delete_table(TableName=table)
    ok("DynamoDB Local create table + conditional put (second: ConditionalCheckFailedException)")
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr)
        raise
