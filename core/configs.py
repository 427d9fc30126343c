"""Settings turned into the configs that handlers take (handlers never read settings themselves)."""

from __future__ import annotations

from core.settings import Settings
from handlers.email_models import SmtpConfig
from handlers.llm import LlmConfig
from handlers.outbound import OutboundPolicy


def outbound_policy(settings: Settings) -> OutboundPolicy:
    """The outbound guard's policy, from settings (used at submit time and by the client)."""
    return OutboundPolicy(
        allow_hosts=settings.outbound_allow_hosts,
        allow_networks=settings.outbound_allow_networks,
        allow_http=settings.outbound_allow_http,
        timeout=settings.outbound_timeout_seconds,
        max_response_bytes=settings.outbound_max_response_bytes,
    )


def smtp_config(settings: Settings) -> SmtpConfig:
    """SMTP relay settings as the email handler takes them."""
    return SmtpConfig(
        # unset only in workers without the email queue: `gateway worker email` refuses to start
        host=settings.smtp_host or "",
        port=settings.smtp_port,
        tls=settings.smtp_tls,
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout=settings.smtp_timeout_seconds,
        default_from=settings.mail_from,
    )


def llm_config(settings: Settings) -> LlmConfig:
    """LLM provider settings as the LLM handler takes them."""
    return LlmConfig(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        default_model=settings.llm_default_model,
        timeout=settings.llm_timeout_seconds,
    )
