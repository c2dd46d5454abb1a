"""Prometheus metrics of one API process: requests, latency, verdicts, inference time.

Each app gets its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from app.config import Config
    from indexing.bank_cache import CacheStats
    from indexing.drift import DriftReport
    from indexing.history import History
    from indexing.service import NominalService

log = logging.getLogger("nominal.api")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nominal_http_requests_total", "HTTP requests by route template, method and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "nominal_http_request_seconds", "HTTP request latency by route template.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.verdicts = Counter(
            "nominal_verdicts_total", "Verdicts by machine setting and outcome.",
            ["setting", "verdict"], registry=self.registry,
        )
        self.inference = Histogram(
            "nominal_inference_seconds", "Embedding plus nominal-neighbour search, per inspected image.",
            ["setting"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

        # Set once the service exists: () -> drift reports of every setting, computed at each scrape.
        self.drift_source: Callable[[], list[DriftReport]] | None = None
        self.registry.register(_DriftCollector(self))
        # Set once the service exists: () -> the patch bank cache's counters (`indexing.bank_cache.CacheStats`).
        self.bank_source: Callable[[], CacheStats] | None = None
        self.registry.register(_BankCollector(self))
        # Set once the service exists: () -> (setting, "exact" | "approximate") for each active version.
        self.search_source: Callable[[], list[tuple[str, str]]] | None = None
        self.registry.register(_SearchCollector(self))

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Counts and times every HTTP request, as plain ASGI (Starlette's BaseHTTPMiddleware costs latency)."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                # The router put the matched route in the scope: label by its template
                # ("/v1/settings/{setting}"), not the raw path, so label values stay bounded.
                template = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], template, str(status)).inc()
                self.latency.labels(scope["method"], template).observe(time.perf_counter() - started)

        return measured

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


_DRIFT_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("nominal_drift_state", "Drift state per setting: 0 ok, 1 warn, 2 alarm.", "state"),
    ("nominal_drift_ks_statistic", "Two-sample KS statistic of the recent scores against the calibration's.", "ks_statistic"),
    ("nominal_drift_ks_p_value", "KS p-value of the recent scores against the calibration's.", "ks_p_value"),
    ("nominal_drift_psi", "Population stability index of the recent scores against the calibration's.", "psi"),
    ("nominal_fail_rate", "FAIL rate over the recent window.", "fail_rate"),
    ("nominal_fail_rate_predicted", "FAIL rate the calibration in use predicts for good parts.", "predicted_fail_rate"),
    ("nominal_drift_window_verdicts", "Verdicts in the recent drift window.", "window"),
    ("nominal_score_mean", "Mean score over the recent window.", "mean_score"),
    ("nominal_drift_embedding_shift", "Mean embedding of the recent window from the nominal centroid, in standard errors.",
     "embedding_shift"),
)


class _DriftCollector:
    """Per-setting drift gauges, computed when /metrics is scraped (no cost per verdict)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        from indexing.drift import finite_or_nan, state_number

        reports = self.metrics.drift_source() if self.metrics.drift_source else []
        for name, text, attribute in _DRIFT_GAUGES:
            family = GaugeMetricFamily(name, text, labels=["setting"])
            for report in reports:
                value = getattr(report, attribute)
                family.add_metric([report.setting], state_number(value) if attribute == "state" else finite_or_nan(value))
            yield family


class _BankCollector:
    """The patch bank cache of this process (`NOMINAL_MAX_BANK_BYTES`), read at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        if self.metrics.bank_source is None:
            return
        stats = self.metrics.bank_source()
        gauges = (
            ("nominal_patch_bank_bytes", "Estimated bytes of the patch banks held in memory now.", stats.bytes),
            ("nominal_patch_bank_budget_bytes", "NOMINAL_MAX_BANK_BYTES: the budget of all banks held.", stats.budget),
            ("nominal_patch_banks_loaded", "Patch banks held in memory now.", stats.banks),
            ("nominal_patch_bank_oversize", "1 while a bank larger than the whole budget is held (served anyway).",
             stats.oversize_held),
        )
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        counters = (
            ("nominal_patch_bank_evictions", "Patch banks evicted to stay within the budget.", stats.evictions),
            ("nominal_patch_bank_loads", "Patch banks loaded from the store (first loads and reloads).", stats.loads),
            ("nominal_patch_bank_oversize_loads", "Patch banks loaded that alone exceeded the budget.", stats.oversize),
        )
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)


class _SearchCollector:
    """Which index answers each setting's global search (NOMINAL_APPROXIMATE_ABOVE), read at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        if self.metrics.search_source is None:
            return
        family = GaugeMetricFamily(
            "nominal_search_approximate",
            "1 when a setting's active version is searched through the approximate index (candidates rescored "
            "exactly, above NOMINAL_APPROXIMATE_ABOVE points), 0 when searched exactly.",
            labels=["setting"],
        )
        for setting, mode in self.metrics.search_source():
            family.add_metric([setting], 1.0 if mode == "approximate" else 0.0)
        yield family


def search_modes(service: "NominalService") -> list[tuple[str, str]]:
    """(setting, search mode) of every setting with an active version; one deleted meanwhile is left out."""
    found = []
    for setting in service.list_settings():
        try:
            version = service.active_version(setting.name)
            if version is not None:
                found.append((setting.name, service.store.search_mode(version.collection)))
        except ValueError:  # deleted between the listing and the lookup
            continue
    return found


def drift_reports(config: "Config", service: "NominalService", history: "History") -> list["DriftReport"]:
    """The drift report of every calibrated setting; a setting that cannot be judged is left out.

    Uncalibrated settings are left out of the gauges: their reference (the nominal leave-one-out
    scores) costs a search per nominal image, too much for every scrape (`GET .../drift` has it).
    """
    from indexing.drift import compute_drift

    found = []
    for setting in service.list_settings():
        try:
            if service.usable_calibration(setting.name) is None:
                continue
            found.append(compute_drift(service, history, setting.name, last=config.drift_window,
                                       minutes=config.drift_minutes))
        except Exception as error:  # noqa: BLE001 - one setting without images must not hide the others
            log.debug("no drift for %s: %s", setting.name, error)
    return found
