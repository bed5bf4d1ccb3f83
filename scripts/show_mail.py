"""Print the newest email LocalStack recorded for a recipient: subject, recipients, attachments."""
import email
import email.policy
import json
import sys
import urllib.request

to = sys.argv[1]
with urllib.request.urlopen("http://127.0.0.1:4566/_aws/ses", timeout=5) as r:
    messages = json.load(r)["messages"]
mine = [m for m in messages if to in (m.get("Destination") or {}).get("ToAddresses", []) or to in (m.get("RawData") or "")]
if not mine:
    sys.exit(f"no email to {to} recorded")
msg = email.message_from_string(mine[-1]["RawData"], policy=email.policy.default)
print(f"From:        {msg['From']}")
print(f"To:          {msg['To']}")
print(f"Subject:     {msg['Subject']}")
for part in msg.iter_attachments():
    print(f"Attachment:  {part.get_filename()} ({len(part.get_content() if isinstance(part.get_content(), bytes) else part.get_content().encode())} bytes, {part.get_content_type()})")
body = msg.get_body(preferencelist=("plain",))
if body is not None:
    print("\n" + "\n".join("    " + line for line in body.get_content().splitlines()[:24]))
