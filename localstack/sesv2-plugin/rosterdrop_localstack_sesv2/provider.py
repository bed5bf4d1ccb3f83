"""SES v2 for LocalStack's open edition, on the state of LocalStack's SES (v1) provider.

SendEmail and the single-identity operations are handled here, on moto's SES backend, which the
SES v1 provider uses too: an identity verified through either API counts for both. SendEmail
rejects unverified senders the way AWS does and records each message like the SES v1 provider,
so it shows at GET /_aws/ses. Every other SES v2 operation goes to moto's sesv2 backend, which
keeps its state in that same SES backend.
"""

import email
from email.utils import parseaddr

from localstack.aws.api import CommonServiceException, RequestContext, handler
from localstack.aws.spec import load_service
from localstack.services.moto import MotoFallbackDispatcher, call_moto
from localstack.services.plugins import ServiceLifecycleHook
from localstack.services.ses.models import SentEmail, SentEmailBody
from localstack.services.ses.provider import (
    get_ses_backend,
    recipients_from_destination,
    register_ses_api_resource,
    save_for_retrospection,
)
from localstack.utils.strings import to_str


def _error(code: str, message: str) -> CommonServiceException:
    return CommonServiceException(code, message, status_code=400, sender_fault=True)


class SesV2Provider(ServiceLifecycleHook):
    service = "sesv2"

    def on_after_init(self):
        register_ses_api_resource()

    @handler("SendEmail", expand=False)
    def send_email(self, context: RequestContext, request: dict) -> dict:
        content, destination = request["Content"], request.get("Destination") or {}
        source = request.get("FromEmailAddress")
        if "Raw" not in content and "Simple" not in content:
            raise NotImplementedError  # templates: left to moto
        raw = to_str(content["Raw"]["Data"]) if "Raw" in content else None
        if raw is not None and not source:
            source = email.message_from_string(raw)["From"]
        if not source:
            raise _error("BadRequestException", "Missing required parameter: FromEmailAddress")
        backend = get_ses_backend(context)
        address = parseaddr(source)[1]
        if not {address, address.rpartition("@")[2]} & set(backend.email_identities):
            raise _error(
                "MessageRejected",
                "Email address is not verified. The following identities failed the check"
                f" in region {context.region.upper()}: {address}",
            )
        if raw is not None:
            sent = backend.send_raw_email(source, recipients_from_destination(destination), raw)
            record = SentEmail(Id=sent.id, Region=context.region, Source=source, RawData=raw)
        else:
            simple = content["Simple"]
            text = simple["Body"].get("Text", {}).get("Data")
            html = simple["Body"].get("Html", {}).get("Data")
            subject = simple["Subject"]["Data"]
            sent = backend.send_email(source, subject, html or text, destination)
            record = SentEmail(
                Id=sent.id,
                Region=context.region,
                Destination=destination,
                Source=source,
                Subject=subject,
                Body=SentEmailBody(text_part=text, html_part=html),
            )
        save_for_retrospection(record)
        return {"MessageId": sent.id}

    @handler("CreateEmailIdentity", expand=False)
    def create_email_identity(self, context: RequestContext, request: dict) -> dict:
        name, backend = request["EmailIdentity"], get_ses_backend(context)
        if name in backend.email_identities:
            raise _error("AlreadyExistsException", f"Email identity {name} already exists.")
        identity = backend.create_email_identity_v2(
            name,
            request.get("Tags"),
            request.get("DkimSigningAttributes"),
            request.get("ConfigurationSetName"),
        )
        return {
            "IdentityType": identity.identity_type,
            "VerifiedForSendingStatus": True,
            "DkimAttributes": identity.dkim_attributes,
        }

    @handler("GetEmailIdentity", expand=False)
    def get_email_identity(self, context: RequestContext, request: dict) -> dict:
        identity = _identity(context, request["EmailIdentity"])
        response = {k: v for k, v in identity.get_response_object.items() if v is not None}
        # verified at once, as the SES v1 provider reports every identity
        return {**response, "VerifiedForSendingStatus": True, "Tags": identity.tags or []}

    @handler("DeleteEmailIdentity", expand=False)
    def delete_email_identity(self, context: RequestContext, request: dict) -> dict:
        _identity(context, request["EmailIdentity"])
        del get_ses_backend(context).email_identities[request["EmailIdentity"]]
        return {}


def _identity(context: RequestContext, name: str):
    if not (identity := get_ses_backend(context).email_identities.get(name)):
        raise CommonServiceException(
            "NotFoundException", f"Email identity {name} does not exist.", status_code=404, sender_fault=True
        )
    return identity


def dispatch_table(provider: SesV2Provider) -> dict:
    """moto for every SES v2 operation, the provider's handlers where it has them."""
    table = {op: (lambda ctx, _req: call_moto(ctx)) for op in load_service("sesv2").operation_names}
    table.update(MotoFallbackDispatcher(provider))
    return table
