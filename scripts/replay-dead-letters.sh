#!/usr/bin/env bash
# Replay what landed in a function's dead-letter queue (AWS): each message is Lambda's on-failure
# record; its requestPayload is the original event, invoked again asynchronously. Every stage is
# idempotent, so replaying an event that partly succeeded is safe.
# Usage: scripts/replay-dead-letters.sh <stack-name> <Ingest|Apply|Finalize|Invites> [max-messages]
set -euo pipefail
stack=$1 fn=$2 max=${3:-100}
queue=$(aws cloudformation describe-stacks --stack-name "$stack" --query "Stacks[0].Outputs[?OutputKey=='${fn}DeadLetterQueueUrl'].OutputValue" --output text)
function=$(aws cloudformation describe-stack-resource --stack-name "$stack" --logical-resource-id "${fn}Function" --query StackResourceDetail.PhysicalResourceId --output text)
n=0
while ((n < max)); do
  msg=$(aws sqs receive-message --queue-url "$queue" --max-number-of-messages 1 --wait-time-seconds 1 --output json)
  [[ $(jq '.Messages | length // 0' <<<"$msg") == 0 ]] && break
  body=$(jq -r '.Messages[0].Body' <<<"$msg")
  receipt=$(jq -r '.Messages[0].ReceiptHandle' <<<"$msg")
  jq -c '.requestPayload' <<<"$body" >/tmp/rosterdrop-replay.json
  aws lambda invoke --function-name "$function" --invocation-type Event --cli-binary-format raw-in-base64-out \
    --payload file:///tmp/rosterdrop-replay.json /dev/null >/dev/null
  aws sqs delete-message --queue-url "$queue" --receipt-handle "$receipt"
  n=$((n + 1))
done
echo "replayed $n event(s) to $function"
