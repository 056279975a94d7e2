"""The alert: a Prefect automation that turns a Failed `regression` flow run into a notification
through a webhook block. Run once per Prefect server (again to change the URL; it replaces both):

    python -m flows.alerts --webhook_url https://hooks.example.com/T000/B000     # or: make alert WEBHOOK_URL=...
"""

from __future__ import annotations

import argparse
import sys

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.exceptions import ObjectNotFound

BLOCK_NAME = "odbench-regression-alert"
AUTOMATION_NAME = "odbench: regression failed"
FLOW_NAME = "regression"
SUBJECT = "odbench regression: {{ flow_run.name }} failed"
BODY = ("Flow run {{ flow_run.name }} of flow {{ flow.name }} ended {{ flow_run.state.name }}:\n"
        "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}")


def save_webhook(url: str) -> CustomWebhookNotificationBlock:
    """The webhook block: POSTs {"subject", "body", "source"} as JSON to `url`."""
    block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=url,
                                           json_data={"subject": "{{subject}}", "body": "{{body}}",
                                                      "source": "odbench"})
    block.save(BLOCK_NAME, overwrite=True)
    return block


def regression_failed_trigger() -> EventTrigger:
    """Any flow run of the `regression` flow entering Failed, once per event."""
    return EventTrigger(
        expect={"prefect.flow-run.Failed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
        posture=Posture.Reactive,
        threshold=1,
        within=0,
    )


def create_alert(webhook_url: str) -> Automation:
    """(Re)create the webhook block and the automation; returns the automation."""
    block = save_webhook(webhook_url)
    try:
        Automation.read(name=AUTOMATION_NAME).delete()
    except (ObjectNotFound, ValueError):
        pass
    return Automation(
        name=AUTOMATION_NAME,
        description=f"Notify {BLOCK_NAME} when a {FLOW_NAME} flow run fails (a metric crossed its threshold).",
        trigger=regression_failed_trigger(),
        actions=[SendNotification(block_document_id=block._block_document_id, subject=SUBJECT, body=BODY)],
    ).create()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("--webhook_url", required=True, help="where the notification is POSTed (JSON)")
    args = parser.parse_args(argv)
    automation = create_alert(args.webhook_url)
    print(f"automation {automation.name!r} ({automation.id}) notifies {args.webhook_url} through block {BLOCK_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
