"""The bench's results as a plain-text (Markdown) table."""

from __future__ import annotations

from collections.abc import Mapping


def _row(what: str, value: object, note: str = "") -> str:
    return f"| {what} | {value} | {note} |"


def render_table(results: Mapping[str, object]) -> str:
    """A Markdown table of the figures present in `results` (missing parts are left out)."""
    lines = ["| measure | value | notes |", "|---|---|---|"]
    bare = results.get("bare_subscriber")
    if isinstance(bare, Mapping):
        lines.append(_row("limit: bare paho subscriber (ack only)", f"{bare['msgs_per_s']:,} msgs/s"))
    bare_gateway = results.get("bare_gateway_client")
    if isinstance(bare_gateway, Mapping):
        lines.append(
            _row(
                "limit: the gateway's MQTT client (ack only)",
                f"{bare_gateway['msgs_per_s']:,} msgs/s",
                "gateway.mqtt.BurstClient: buffered reads, messages handed over per burst, one write per "
                "batch of acks; no pipeline",
            )
        )
    influx = results.get("influx_write")
    if isinstance(influx, Mapping):
        lines.append(
            _row("limit: InfluxDB batch writes (5,000/batch)", f"{influx['points_per_s']:,} points/s")
        )
    for key, label in (("drain_1", "1 gateway"), ("drain_2", "2 gateways ($share)")):
        drain = results.get(key)
        if not isinstance(drain, Mapping):
            continue
        lines.append(
            _row(
                f"backlog drain, {label}",
                f"{drain['readings_per_s']:,} readings/s",
                f"{drain['messages']:,} msgs in {drain['drain_s']} s"
                f" ({drain.get('batches', '?')} batches, mean {drain.get('mean_batch', '?')});"
                f" CPU {drain['cpu_percent']} % per process; "
                f"peak RSS {drain['peak_rss_mib']} MiB; lost {drain['lost']}, doubled {drain['doubled']}, "
                f"quarantined {drain['quarantined']}, alerts {drain.get('alerts', '?')}, "
                f"doubled {drain['alerts_doubled']}",
            )
        )
    ratios = results.get("ratios")
    if isinstance(ratios, Mapping):
        for name, value in ratios.items():
            lines.append(_row(f"ratio {name.replace('_', ' ')}", f"{float(value):.2f}"))
    lines.extend(_ramp_rows(results.get("ramp")))
    latency = results.get("alert_latency")
    if isinstance(latency, Mapping):
        for target in ("alert_row", "sms_request"):
            figures = latency.get(target)
            if isinstance(figures, Mapping):
                lines.append(
                    _row(
                        f"alert latency to {target.replace('_', ' ')}",
                        f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, p99 {figures['p99_ms']} ms",
                        f"{figures['n']} timed, {latency.get(target.split('_')[0] + '_missing', 0)} missing; "
                        f"{latency['background_rate']:,} readings/s background, "
                        f"{latency.get('gateways', 1)} gateway(s){_cpu_note(latency)}",
                    )
                )
    web = results.get("web")
    if isinstance(web, Mapping):
        for page, figures in web.items():
            if isinstance(figures, Mapping):
                path = figures.get("path")
                lines.append(
                    _row(
                        f"web: {page.replace('_', ' ')}" + (f" (`{path}`)" if path else ""),
                        f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms",
                        str(figures.get("note", "")),
                    )
                )
    return "\n".join(lines)


def _ramp_rows(ramp: object) -> list[str]:
    """The ramp's answer, then one row per step."""
    if not isinstance(ramp, Mapping):
        return []
    rows = [
        _row(
            "live ingest, 1 gateway: highest sustained rate",
            f"{ramp['highest_sustained_rate']:,} readings/s",
            f"stored {ramp['highest_sustained_stored_rate']:,}/s at that step; stopped by {ramp['stopped_by']}; "
            f"{ramp['step_seconds']} s steps; lost {ramp['lost']}, doubled {ramp['doubled']}, "
            f"quarantined {ramp['quarantined']} of {ramp['acknowledged']:,} published",
        )
    ]
    for step in ramp["steps"]:
        verdict = "sustained" if step["sustained"] else f"NOT sustained ({step['limited_by']})"
        rows.append(
            _row(
                f"ramp step {step['target_rate']:,}/s",
                f"stored {step['stored_rate']:,}/s",
                f"published {step['publish_rate']:,}/s; lag at end {step['lag_end']:,} ({step['lag_end_s']} s), "
                f"trend {step['lag_trend_per_s']:+,}/s; CPU gateway {step['gateway_cpu_percent']} %, "
                f"publisher {step['bench_cpu_percent']} %; {verdict}",
            )
        )
    return rows


def _cpu_note(latency: Mapping[str, object]) -> str:
    cpu = latency.get("gateway_cpu_percent")
    if not isinstance(cpu, list) or not cpu:
        return ""
    ahead = latency.get("decided_ahead")
    ahead_note = f"; {ahead} decided while queued behind the batch in hand" if isinstance(ahead, int) else ""
    return f" at {' + '.join(f'{c} %' for c in cpu)} CPU; batch wait {latency.get('batch_max_wait_s')} s{ahead_note}"
