"""The store's schema: one DuckDB file holds runs, prompts, responses, steps, spans, scores and server metrics.

Tables are keyed so that re-running a stage replaces rows instead of duplicating them; JSON columns
hold JSON text. Column lists double as the insert order of the batch writer.
"""

from __future__ import annotations

import functools

SCHEMA_VERSION = 4

TABLES: dict[str, str] = {
    "runs": """
        run_id          VARCHAR PRIMARY KEY,
        started_at      TIMESTAMPTZ,
        finished_at     TIMESTAMPTZ,
        status          VARCHAR,      -- running | completed | failed | interrupted
        corpus_path     VARCHAR,
        corpus_sha256   VARCHAR,
        routes          JSON,         -- routes snapshot, secrets removed
        options         JSON,         -- CLI options of the run (samples, limit, cohorts, ...)
        tool_version    VARCHAR,
        n_prompts       BIGINT,
        n_expected      BIGINT,       -- prompts x routes x samples
        note            VARCHAR
    """,
    "prompts": """
        run_id          VARCHAR,
        prompt_id       VARCHAR,
        cohort          VARCHAR,
        messages        JSON,
        context         VARCHAR,
        tools           JSON,
        expected        JSON,
        metadata        JSON,
        source_line     BIGINT,
        tool_results    JSON,         -- agent rows: scripted tool results {tool: [{match, result}]}; NULL otherwise
        max_steps       INTEGER,      -- agent rows: model calls allowed per trajectory
        PRIMARY KEY (run_id, prompt_id)
    """,
    "responses": """
        run_id          VARCHAR,
        prompt_id       VARCHAR,
        route           VARCHAR,
        sample          INTEGER,
        role            VARCHAR,      -- baseline | candidate
        cohort          VARCHAR,
        model           VARCHAR,      -- gen_ai.request.model
        response_model  VARCHAR,      -- gen_ai.response.model
        response_id     VARCHAR,
        text            VARCHAR,
        tool_calls      JSON,         -- OpenAI tool_calls list, arguments kept as strings
        finish_reason   VARCHAR,
        input_tokens    BIGINT,
        output_tokens   BIGINT,
        total_tokens    BIGINT,
        usage_source    VARCHAR,      -- server | counted
        usage_raw       VARCHAR,      -- the server's usage as sent, when it could not be used (flag usage_invalid)
        flags           VARCHAR[],    -- what was kept but marked: partial, usage_invalid, id_coerced, ... (mirror/assemble.py)
        started_at      TIMESTAMPTZ,
        latency_s       DOUBLE,       -- end to end, first byte sent to last byte received
        ttft_s          DOUBLE,       -- time to first output token (content, reasoning or tool-call delta)
        itl_mean_s      DOUBLE,       -- mean gap between output-token chunks
        itl_p99_s       DOUBLE,
        attempts        INTEGER,
        http_status     INTEGER,
        error_type      VARCHAR,      -- NULL when the call succeeded
        error_message   VARCHAR,
        timed_out       BOOLEAN,
        trace_id        VARCHAR,
        span_id         VARCHAR,      -- the call span; for a trajectory, the trajectory span
        steps           INTEGER,      -- trajectories: model calls made (rows in `steps`); NULL for one call
        stop_reason     VARCHAR,      -- trajectories: answer | max_steps | unscripted_tool | error
        warmup          BOOLEAN,      -- a warm-up call (sent before measurement, sample < 0): stored, never reported
        -- latency figures under other definitions (harness/mirror/latency.py defines every one)
        ttft_content_s  DOUBLE,       -- time to first non-empty delta.content
        ttft_chunk_s    DOUBLE,       -- time to first chunk with choices (vllm bench serve's TTFT)
        e2e_chunk_s     DOUBLE,       -- time to last chunk with choices (vllm bench serve's E2EL)
        itl_chunk_mean_s DOUBLE,      -- gaps between chunks with choices (vllm bench serve's ITL)
        itl_chunk_p99_s DOUBLE,
        tpot_s          DOUBLE,       -- (last - first token chunk) / (output_tokens - 1)
        tpot_chunk_s    DOUBLE,       -- (e2e_chunk_s - ttft_chunk_s) / (output_tokens - 1): vllm bench serve's TPOT
        chunks          INTEGER,      -- chunks with choices
        send_s          DOUBLE,       -- start -> request headers begin to go out (connection ready)
        PRIMARY KEY (run_id, prompt_id, route, sample)
    """,
    # One row per model call of an agent trajectory (harness/mirror/trajectory.py); the response row
    # holds the totals. Read with `step <= responses.steps` (a resumed trajectory may have been shorter).
    "steps": """
        run_id          VARCHAR,
        prompt_id       VARCHAR,
        route           VARCHAR,
        sample          INTEGER,
        step            INTEGER,      -- 1, 2, ...: the model call's position in the trajectory
        text            VARCHAR,
        tool_calls      JSON,         -- the calls this step made (OpenAI list, arguments as strings)
        tool_results    JSON,         -- per call: {tool_call_id, name, content, scripted}; scripted=false: none was scripted (stop)
        finish_reason   VARCHAR,
        input_tokens    BIGINT,
        output_tokens   BIGINT,
        total_tokens    BIGINT,
        usage_source    VARCHAR,
        started_at      TIMESTAMPTZ,
        latency_s       DOUBLE,
        ttft_s          DOUBLE,
        error_type      VARCHAR,
        error_message   VARCHAR,
        trace_id        VARCHAR,
        span_id         VARCHAR,      -- this step's call span (child of the trajectory span)
        PRIMARY KEY (run_id, prompt_id, route, sample, step)
    """,
    "spans": """
        trace_id        VARCHAR,
        span_id         VARCHAR,
        parent_span_id  VARCHAR,
        name            VARCHAR,
        kind            VARCHAR,
        service_name    VARCHAR,      -- routecheck for client spans, the server's for received spans
        start_time      TIMESTAMPTZ,
        end_time        TIMESTAMPTZ,
        duration_s      DOUBLE,
        status_code     VARCHAR,      -- UNSET | OK | ERROR
        status_message  VARCHAR,
        attributes      JSON,
        run_id          VARCHAR,
        route           VARCHAR,
        prompt_id       VARCHAR,
        cohort          VARCHAR,
        sample          INTEGER,
        input_tokens    BIGINT,
        output_tokens   BIGINT,
        ttft_s          DOUBLE,
        error_type      VARCHAR,
        -- a serving engine's per-request span, mapped by its engine (harness/serving/engines/)
        engine          VARCHAR,      -- NULL for other spans
        queue_s         DOUBLE,
        prefill_s       DOUBLE,
        decode_s        DOUBLE,
        e2e_s           DOUBLE,
        PRIMARY KEY (trace_id, span_id)
    """,
    "scores": """
        run_id            VARCHAR,
        prompt_id         VARCHAR,
        route             VARCHAR,
        sample            INTEGER,
        evaluator         VARCHAR,
        score             DOUBLE,     -- in [0, 1]; NULL when not applicable
        passed            BOOLEAN,    -- NULL when not applicable
        applicable        BOOLEAN,
        reason            VARCHAR,
        details           JSON,
        evaluator_version VARCHAR,
        scored_at         TIMESTAMPTZ,
        PRIMARY KEY (run_id, prompt_id, route, sample, evaluator)
    """,
    "server_metrics": """
        run_id          VARCHAR,
        route           VARCHAR,
        scraped_at      TIMESTAMPTZ,
        phase           VARCHAR,      -- before | during | after
        metric          VARCHAR,      -- Prometheus sample name, as the server names it
        labels          JSON,
        value           DOUBLE,
        quantity        VARCHAR       -- the engine-neutral name of the sample (engines/*.py QUANTITIES), NULL if unmapped
    """,
    # MoE routing per response and layer (harness/experts/), from live capture, returned ids or the probe.
    "expert_stats": """
        run_id            VARCHAR,
        prompt_id         VARCHAR,
        route             VARCHAR,
        sample            INTEGER,
        source            VARCHAR,    -- live | returned | probe
        layer             INTEGER,    -- MoE layer index (position in the model's router outputs)
        num_experts       INTEGER,
        top_k             INTEGER,
        tokens            BIGINT,     -- tokens routed (prompt and answer)
        counts            BIGINT[],   -- (token, slot) assignments per expert, length num_experts
        entropy_sum       DOUBLE,     -- sum over tokens of the router entropy (nats); NULL without probabilities
        mass_sum          DOUBLE,     -- sum over tokens of the chosen experts' probability mass
        capacity_factors  DOUBLE[],   -- capacity simulation (harness/experts/stats.py): factors,
        dropped_slots     BIGINT[],   -- slots dropped at each factor,
        dropped_tokens    BIGINT[],   -- tokens whose every slot was dropped, at each factor
        recorded_at       TIMESTAMPTZ,
        PRIMARY KEY (run_id, prompt_id, route, sample, source, layer)
    """,
}


def columns(table: str) -> list[str]:
    """Column names of a table, in declaration order."""
    cols = []
    for line in TABLES[table].splitlines():
        line = line.split("--")[0].strip()
        if not line or line.upper().startswith("PRIMARY KEY"):
            continue
        cols.append(line.split()[0])
    return cols


@functools.cache
def json_columns(table: str) -> frozenset[str]:
    cols = set()
    for line in TABLES[table].splitlines():
        parts = line.split("--")[0].split()
        if len(parts) >= 2 and parts[1].rstrip(",") == "JSON":
            cols.add(parts[0])
    return frozenset(cols)




# Columns added after schema version 1 (version 2: spans' engine columns, quantity; 3: warmup, flags; 4: latency figures under other definitions): a store written by an older routecheck gains them on open.
ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "spans": [("engine", "VARCHAR"), ("queue_s", "DOUBLE"), ("prefill_s", "DOUBLE"), ("decode_s", "DOUBLE"), ("e2e_s", "DOUBLE")],
    "server_metrics": [("quantity", "VARCHAR")],
    # version 3: agent trajectories, warm-up calls, raw usage and call flags
    "prompts": [("tool_results", "JSON"), ("max_steps", "INTEGER")],
    "responses": [("steps", "INTEGER"), ("stop_reason", "VARCHAR"), ("warmup", "BOOLEAN"), ("usage_raw", "VARCHAR"), ("flags", "VARCHAR[]"),
                  # version 4: latency figures under other definitions (harness/mirror/latency.py)
                  ("ttft_content_s", "DOUBLE"), ("ttft_chunk_s", "DOUBLE"), ("e2e_chunk_s", "DOUBLE"),
                  ("itl_chunk_mean_s", "DOUBLE"), ("itl_chunk_p99_s", "DOUBLE"), ("tpot_s", "DOUBLE"),
                  ("tpot_chunk_s", "DOUBLE"), ("chunks", "INTEGER"), ("send_s", "DOUBLE")],
}
