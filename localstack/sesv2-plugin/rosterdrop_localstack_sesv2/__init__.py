"""LocalStack plugins for rosterdrop's local stack.

- ``localstack.aws.provider`` / ``sesv2:default``: an SES v2 provider (see provider.py).
- ``localstack.hooks.on_infra_start`` / ``rosterdrop_loopback_only``: keeps LocalStack off DNS.
"""

from localstack.runtime import hooks
from localstack.services.plugins import Service, aws_provider


@aws_provider()
def sesv2():
    from .provider import SesV2Provider, dispatch_table

    return Service.for_provider(SesV2Provider(), dispatch_table_factory=dispatch_table)


@hooks.on_infra_start(priority=100)
def rosterdrop_loopback_only():
    # LocalStack resolves s3.<LOCALSTACK_HOST> once through DNS to choose the URL of its internal
    # S3 clients; answer "not resolvable" up front, so it uses localhost and asks no DNS server.
    from localstack.utils.aws import aws_stack

    aws_stack.CACHE_S3_HOSTNAME_DNS_STATUS = False
