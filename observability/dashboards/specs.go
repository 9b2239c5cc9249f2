package dashboards

import "fmt"

// Metric names written by the data plane, the xDS client, the control
// plane and sync. The alert rules in observability/prometheus/alerts.yml
// use the same names.
const (
	requests     = "petmesh_dataplane_requests_total"
	duration     = "petmesh_dataplane_request_duration_seconds_bucket"
	edgeSel      = `listener="edge-http"`
	clientSel    = `listener=~"edge-http|outbound"`
	inboundSel   = `listener="inbound"`
	anyListener  = `listener!=""`
	rateInterval = "[$__rate_interval]"
)

// sumRate is sum by (by) (rate(metric{sel}[$__rate_interval])).
func sumRate(by, metric, sel string) string {
	sum := "sum"
	if by != "" {
		sum = "sum by (" + by + ")"
	}
	if sel != "" {
		metric += "{" + sel + "}"
	}
	if by == "" {
		return fmt.Sprintf("sum(rate(%s%s))", metric, rateInterval)
	}
	return fmt.Sprintf("%s (rate(%s%s))", sum, metric, rateInterval)
}

// orZero appends a fallback of the same aggregation of an always present
// series times zero, so that a panel over a rare event shows 0 instead of
// no data.
func orZero(expr, fallback string) string {
	return fmt.Sprintf("%s\nor\n%s * 0", expr, fallback)
}

// errorRatio is the share of 5xx responses among requests matching sel,
// grouped by by; 0 (not no data) when there were no 5xx.
func errorRatio(by, sel string) string {
	errs := sumRate(by, requests, sel+`, code=~"5.."`)
	all := sumRate(by, requests, sel)
	return fmt.Sprintf("(\n%s\n)\n/\n%s", orZero(errs, all), all)
}

// codeRate is the rate of responses with code, grouped by by, 0 when none.
func codeRate(by, sel, code string) string {
	return orZero(sumRate(by, requests, fmt.Sprintf(`%s, code="%s"`, sel, code)), sumRate(by, requests, sel))
}

// quantile is histogram_quantile(q) of the request duration histogram.
func quantile(q float64, by, sel string) string {
	le := "le"
	if by != "" {
		le = by + ", le"
	}
	return fmt.Sprintf("histogram_quantile(%g, %s)", q, sumRate(le, duration, sel))
}

func meshOverview() boardSpec {
	return boardSpec{
		uid:         "petmesh-mesh-overview",
		title:       "petmesh / Mesh overview",
		description: "RED (rate, errors, duration) per service and per route, from the edge and every sidecar.",
		tags:        []string{"mesh"},
		rows: []rowSpec{
			{title: "Services, client side (edge and sidecar egress), by destination cluster", panels: []panelSpec{
				{title: "Requests per second by cluster", unit: "reqps",
					desc:    "Requests the edge and the sidecars' egress listeners sent to each cluster.",
					targets: []target{{expr: sumRate("cluster", requests, clientSel), legend: "{{cluster}}"}}},
				{title: "5xx ratio by cluster", unit: "percentunit",
					desc:    "Share of 5xx responses per destination cluster (0 when there were none).",
					targets: []target{{expr: errorRatio("cluster", clientSel), legend: "{{cluster}}"}}},
				{title: "Latency by cluster", unit: "s",
					desc: "p50 and p99 of the request duration per destination cluster; exemplars link to traces.",
					targets: []target{
						{expr: quantile(0.5, "cluster", clientSel), legend: "p50 {{cluster}}"},
						{expr: quantile(0.99, "cluster", clientSel), legend: "p99 {{cluster}}", exemplar: true},
					}},
			}},
			{title: "Services, server side (sidecar ingress), by instance", panels: []panelSpec{
				{title: "Requests per second by instance", unit: "reqps",
					desc:    "Requests each sidecar's inbound listener handed to its service.",
					targets: []target{{expr: sumRate("service, instance", requests, inboundSel), legend: "{{service}} {{instance}}"}}},
				{title: "5xx ratio by instance", unit: "percentunit",
					desc:    "Share of 5xx answers of each service instance, as seen by its sidecar.",
					targets: []target{{expr: errorRatio("service, instance", inboundSel), legend: "{{service}} {{instance}}"}}},
				{title: "p99 latency by instance", unit: "s",
					targets: []target{{expr: quantile(0.99, "service, instance", inboundSel), legend: "{{service}} {{instance}}", exemplar: true}}},
			}},
			{title: "Routes", panels: []panelSpec{
				{title: "Requests per second by route", unit: "reqps",
					targets: []target{{expr: sumRate("listener, route", requests, anyListener), legend: "{{listener}} {{route}}"}}},
				{title: "5xx ratio by route", unit: "percentunit",
					targets: []target{{expr: errorRatio("listener, route", anyListener), legend: "{{listener}} {{route}}"}}},
				{title: "p99 latency by route", unit: "s",
					targets: []target{{expr: quantile(0.99, "listener, route", anyListener), legend: "{{listener}} {{route}}", exemplar: true}}},
			}},
			{title: "Resilience", panels: []panelSpec{
				{title: "Retries per second by cluster", unit: "reqps",
					targets: []target{{expr: orZero(sumRate("cluster", "petmesh_dataplane_upstream_rq_retry_total", ""), sumRate("cluster", requests, clientSel)), legend: "{{cluster}}"}}},
				{title: "Outlier ejections per second by cluster", unit: "ops",
					targets: []target{{expr: orZero(sumRate("cluster", "petmesh_dataplane_outlier_ejections_total", ""), sumRate("cluster", requests, clientSel)), legend: "{{cluster}}"}}},
				{title: "Open circuits by cluster", unit: "short",
					desc:    "1 while any proxy's circuit breaker towards the cluster is open.",
					targets: []target{{expr: orZero("max by (cluster) (petmesh_dataplane_circuit_open)", sumRate("cluster", requests, clientSel)), legend: "{{cluster}}"}}},
				{title: "Rate limited per second by route", unit: "reqps",
					desc:    "Requests answered 429 by a local rate limit.",
					targets: []target{{expr: orZero(sumRate("listener, route", "petmesh_dataplane_rate_limited_total", ""), sumRate("listener, route", requests, edgeSel)), legend: "{{listener}} {{route}}"}}},
			}},
		},
	}
}

func edge() boardSpec {
	return boardSpec{
		uid:         "petmesh-edge",
		title:       "petmesh / Edge",
		description: "The edge server: traffic, authentication failures, rate limiting and latency per route.",
		tags:        []string{"edge"},
		rows: []rowSpec{
			{title: "Traffic", panels: []panelSpec{
				{kind: statPanel, title: "Requests per second", unit: "reqps",
					targets: []target{{expr: sumRate("", requests, edgeSel)}}},
				{kind: statPanel, title: "5xx ratio", unit: "percentunit",
					targets: []target{{expr: errorRatio("", edgeSel)}}},
				{kind: statPanel, title: "Edge instances up", unit: "short",
					targets: []target{{expr: `sum(up{job="edge"})`}}},
				{title: "Requests per second by route and status", unit: "reqps", width: 24,
					targets: []target{{expr: sumRate("route, code", requests, edgeSel), legend: "{{route}} {{code}}"}}},
			}},
			{title: "Authentication and rate limiting", panels: []panelSpec{
				{title: "Auth failures (401) per second by route", unit: "reqps",
					desc:    "Requests rejected for a missing, invalid or expired token.",
					targets: []target{{expr: codeRate("route", edgeSel, "401"), legend: "{{route}}"}}},
				{title: "Forbidden (403) per second by route", unit: "reqps",
					desc:    "Authenticated requests without a role the route requires.",
					targets: []target{{expr: codeRate("route", edgeSel, "403"), legend: "{{route}}"}}},
				{title: "Rate limited (429) per second by route", unit: "reqps",
					targets: []target{{expr: codeRate("route", edgeSel, "429"), legend: "{{route}}"}}},
			}},
			{title: "Latency and errors", panels: []panelSpec{
				{title: "Latency percentiles", unit: "s",
					desc: "p50, p90 and p99 of every edge request; exemplars link to traces.",
					targets: []target{
						{expr: quantile(0.5, "", edgeSel), legend: "p50"},
						{expr: quantile(0.9, "", edgeSel), legend: "p90"},
						{expr: quantile(0.99, "", edgeSel), legend: "p99", exemplar: true},
					}},
				{title: "p99 latency by route", unit: "s",
					targets: []target{{expr: quantile(0.99, "route", edgeSel), legend: "{{route}}", exemplar: true}}},
				{title: "5xx ratio by route", unit: "percentunit",
					targets: []target{{expr: errorRatio("route", edgeSel), legend: "{{route}}"}}},
			}},
		},
	}
}

func controlPlane() boardSpec {
	return boardSpec{
		uid:         "petmesh-controlplane",
		title:       "petmesh / Control plane",
		description: "xDS control plane: connected proxies, configuration versions, convergence and NACKs.",
		tags:        []string{"controlplane"},
		rows: []rowSpec{
			{title: "Proxies", panels: []panelSpec{
				{kind: statPanel, title: "Connected proxies", unit: "short",
					desc:    "ADS streams open on all control-plane replicas.",
					targets: []target{{expr: "sum(petmesh_controlplane_connected_proxies)"}}},
				{kind: statPanel, title: "Out-of-date proxies", unit: "short",
					desc:    "Proxies that have not ACKed the latest version for over 60s.",
					targets: []target{{expr: "sum(max by (node) (petmesh_controlplane_proxy_stale))"}}},
				{kind: statPanel, title: "Proxies with a live ADS stream", unit: "short",
					desc:    "As reported by the proxies themselves.",
					targets: []target{{expr: "sum(petmesh_xds_connected)"}}},
				{title: "Connected proxies by replica", unit: "short",
					targets: []target{{expr: "sum by (instance) (petmesh_controlplane_connected_proxies)", legend: "{{instance}}"}}},
				{title: "ADS reconnects per second", unit: "ops",
					targets: []target{{expr: "sum by (job, instance) (rate(petmesh_xds_reconnects_total" + rateInterval + "))", legend: "{{job}} {{instance}}"}}},
			}},
			{title: "Versions and NACKs", panels: []panelSpec{
				{title: "Proxies per configuration version", unit: "short",
					desc:    "How many proxies run each accepted version, per resource type.",
					targets: []target{{expr: "count by (type, version) (petmesh_xds_version_info == 1)", legend: "{{type}} {{version}}"}}},
				{title: "ACKs per second by type", unit: "ops",
					targets: []target{{expr: sumRate("type", "petmesh_xds_acks_total", ""), legend: "{{type}}"}}},
				{title: "NACKs per second by type", unit: "ops",
					desc:    "Configuration rejected by proxies; they keep running the previous version.",
					targets: []target{{expr: orZero(sumRate("type", "petmesh_xds_nacks_total", ""), sumRate("type", "petmesh_xds_acks_total", "")), legend: "{{type}}"}}},
			}},
			{title: "Convergence", panels: []panelSpec{
				{title: "Convergence time", unit: "s",
					desc: "Time from a configuration change to the last proxy's ACK (p50, p99).",
					targets: []target{
						{expr: "histogram_quantile(0.5, " + sumRate("le", "petmesh_xds_convergence_seconds_bucket", "") + ")", legend: "p50"},
						{expr: "histogram_quantile(0.99, " + sumRate("le", "petmesh_xds_convergence_seconds_bucket", "") + ")", legend: "p99"},
					}},
				{title: "Configurations applied by proxies per second", unit: "ops",
					targets: []target{{expr: "sum by (job, instance) (rate(petmesh_dataplane_config_applied_total" + rateInterval + "))", legend: "{{job}} {{instance}}"}}},
				{title: "Configurations rejected by proxies per second", unit: "ops",
					targets: []target{{expr: "sum by (job, instance) (rate(petmesh_dataplane_config_rejected_total" + rateInterval + "))", legend: "{{job}} {{instance}}"}}},
			}},
		},
	}
}

func syncJob() boardSpec {
	return boardSpec{
		uid:         "petmesh-sync",
		title:       "petmesh / Sync job",
		description: "The Petfinder sync: runs, duration, pets upserted, Petfinder errors and the last success.",
		tags:        []string{"sync"},
		rows: []rowSpec{
			{title: "Runs", panels: []panelSpec{
				{kind: statPanel, title: "Time since last success", unit: "s",
					desc:    "No data until a run has succeeded. The PetmeshSyncNoSuccess alert fires past 26h.",
					targets: []target{{expr: "time() - max(petmesh_sync_last_success_timestamp_seconds > 0)"}}},
				{kind: statPanel, title: "Runs in the last 24h", unit: "short",
					targets: []target{{expr: "sum(increase(petmesh_sync_runs_total[24h]))"}}},
				{kind: statPanel, title: "Pets upserted in the last 24h", unit: "short",
					targets: []target{{expr: "sum(increase(petmesh_sync_pets_upserted_total[24h]))"}}},
				{title: "Runs by result (per hour)", unit: "short",
					desc:    "succeeded, failed, interrupted, or skipped (another executor held the lock).",
					targets: []target{{expr: "sum by (result) (increase(petmesh_sync_runs_total[1h]))", legend: "{{result}}"}}},
				{title: "Run duration", unit: "s",
					desc: "p50 and p99 of the runs that finished in the last 6 hours.",
					targets: []target{
						{expr: "histogram_quantile(0.5, sum by (le) (increase(petmesh_sync_run_duration_seconds_bucket[6h])))", legend: "p50"},
						{expr: "histogram_quantile(0.99, sum by (le) (increase(petmesh_sync_run_duration_seconds_bucket[6h])))", legend: "p99"},
					}},
			}},
			{title: "Pets and Petfinder", panels: []panelSpec{
				{title: "Pets upserted per second", unit: "ops",
					targets: []target{{expr: "sum(rate(petmesh_sync_pets_upserted_total" + rateInterval + "))", legend: "upserted"}}},
				{title: "Petfinder errors by kind (per hour)", unit: "short",
					desc: "Failed Petfinder API attempts: rate_limited, server, network, timeout, unauthorized, client, decode, token.",
					targets: []target{{expr: orZero("sum by (kind) (increase(petmesh_sync_petfinder_errors_total[1h]))",
						`label_replace(sum(increase(petmesh_sync_pets_upserted_total[1h])), "kind", "none", "", "")`), legend: "{{kind}}"}}},
				{title: "Last success", unit: "dateTimeFromNow",
					targets: []target{{expr: "max(petmesh_sync_last_success_timestamp_seconds > 0) * 1000", legend: "last success"}}},
			}},
		},
	}
}
