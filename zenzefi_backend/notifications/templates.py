"""The text of every e-mail we send (SPEC §3.10), by kind: a subject and a plain-text body.

`$name` placeholders are filled by `string.Template.substitute`, so a missing value is an error at queue
time, never a half-filled e-mail; values are inserted as given and never interpreted as templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from string import Template


@dataclass(frozen=True)
class EmailTemplate:
    subject: Template
    body: Template
    # Receipts and gifts are sent even to users who opted out of notifications (SPEC §3.10).
    always_sent: bool = False


def _template(subject: str, body: str, *, always_sent: bool = False) -> EmailTemplate:
    return EmailTemplate(Template(subject), Template(body), always_sent)


_SIGNATURE = "\n-- \nZenzefi · $frontend_url\nYou can turn these e-mails off in your profile (email_notifications).\n"
_RECEIPT_SIGNATURE = "\n-- \nZenzefi · $frontend_url\n"

TEMPLATES: dict[str, EmailTemplate] = {
    "token_expiring": _template(
        "Your Zenzefi access token expires soon",
        "Hello $username,\n\nyour access token …$token_hint ($scope, $duration_hours h) expires at $expires_at"
        " (UTC).\nBuy a new one, or turn on auto-renewal, at $frontend_url.\n" + _SIGNATURE,
    ),
    "balance_low": _template(
        "Your Zenzefi balance is low",
        "Hello $username,\n\nyour balance is now $balance ZNC, below $threshold ZNC.\n"
        "Top up at $frontend_url to keep buying access tokens.\n" + _SIGNATURE,
    ),
    "referral_bonus": _template(
        "You earned a referral bonus",
        "Hello $username,\n\n$referee_username made a first purchase with your referral code, and"
        " $bonus_amount ZNC were added to your balance.\n" + _SIGNATURE,
    ),
    "payment_receipt": _template(
        "Receipt: $amount_znc ZNC added to your balance",
        "Hello $username,\n\nwe received your payment.\n\n  Credited:  $amount_znc ZNC\n$payment_lines"
        "  Reference: $reference\n  Date:      $paid_at (UTC)\n  Balance:   $balance_after ZNC\n"
        + _RECEIPT_SIGNATURE,
        always_sent=True,
    ),
    "gift_received": _template(
        "$sender_username sent you a Zenzefi access token",
        "Hello,\n\n$sender_username gave you a Zenzefi access token ($scope, $duration_hours h).\n\n"
        "  Access token: $token\n\nPaste it into the Zenzefi desktop client. Its clock starts with the first"
        " request.\nKeep it secret: anyone with it can use the token.\n" + _RECEIPT_SIGNATURE,
        always_sent=True,
    ),
    # Sent even to users who opted out: it is the renewal's receipt and the only place its secret is shown.
    "auto_renewal_done": _template(
        "Your Zenzefi access token was renewed",
        "Hello $username,\n\nyour access token $renewed_token_hint expires at $renewed_expires_at (UTC), so"
        " auto-renewal bought a replacement for $price ZNC.\n\n  New access token: $token\n  Duration:"
        "         $duration_hours h (its clock starts with its first request)\n  Scope:            $scope\n"
        "  Balance:          $balance_after ZNC\n\nPaste it into the desktop client when the old one expires."
        " This e-mail is the only place the new token is shown; keep it secret: anyone with it can use the"
        " token.\nYou can turn auto-renewal off at $frontend_url.\n" + _RECEIPT_SIGNATURE,
        always_sent=True,
    ),
    "auto_renewal_failed": _template(
        "Auto-renewal of your Zenzefi access token failed",
        "Hello $username,\n\nauto-renewal could not buy a replacement for your access token"
        " $renewed_token_hint (expires $renewed_expires_at UTC): it costs $price ZNC and your balance is"
        " $balance ZNC. Nothing was charged.\n"
        "Auto-renewal is now off. Top up and turn it on again at $frontend_url.\n" + _SIGNATURE,
    ),
}
KINDS = tuple(TEMPLATES)
