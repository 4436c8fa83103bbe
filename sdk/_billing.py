"""The billing figures of SPEC §12, in document order (shared by the runtime and the CLI)."""

BILLING_FIGURES = (
    "requests",
    "ws_messages_in",
    "billable_requests",
    "cpu_ms",
    "active_s",
    "gb_s",
    "rows_read",
    "rows_written",
    "stored_bytes",
    "cost_usd",
)
