# Tables of paired comparisons: the default run's ablations (reports/tables/), the regime study
# (`snakemake --cores N regime`) and the replicate study (`snakemake --cores N replicates`). The two
# studies are not part of the default run; their tables go to reports/regime/ and
# reports/replicates/, their own files under data/regime/, so none is inside what the DVC stages
# version.


rule compare:
    input:
        runs=run_metrics(),
    output:
        table="reports/tables/ablation.md",
        csv="reports/tables/ablation.csv",
        html=report(
            "reports/tables/ablation.html",
            caption="../report/comparisons.rst",
            category="2. Paired comparisons",
            labels={
                "shows": "paired differences of the ablation pairs with 95% CI",
                "table": "ablation",
            },
        ),
        tex="reports/tables/ablation.tex",
        figure=report(
            "reports/figures/ablation_forest.png",
            caption="../report/forest_pairs.rst",
            category="2. Paired comparisons",
            labels={
                "shows": "the ablation pairs' paired differences with 95% CI",
                "figure": "ablation (forest plot)",
            },
        ),
        figure_svg="reports/figures/ablation_forest.svg",
    log:
        f"{LOGS}/compare/ablation.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        kind="ablation",
        pairs=[f"{a}:{b}" for a, b in comparison_pairs("ablation")],
        stem=subpath(output.table, strip_suffix=".md"),
        figure=subpath(output.figure, strip_suffix=".png"),
        extra="",
    shell:
        "python -m kshot compare --kind {params.kind} --runs {input.runs} "
        "--pairs {params.pairs} --out-stem {params.stem} --figure {params.figure} {params.extra} "
        "--log {log}"


use rule compare as compare_regime with:
    input:
        runs=regime_runs(),
    output:
        table="reports/regime/regime.md",
        csv="reports/regime/regime.csv",
        html=report(
            "reports/regime/regime.html",
            caption="../report/comparisons.rst",
            category="2. Paired comparisons",
            labels={
                "shows": "paired differences per backbone, width, fine-tuning length, grouped layers and loss",
                "table": "regime",
            },
        ),
        tex="reports/regime/regime.tex",
        figure=report(
            "reports/regime/regime_forest.png",
            caption="../report/forest_pairs.rst",
            category="2. Paired comparisons",
            labels={
                "shows": "the regime study's paired differences with 95% CI",
                "figure": "regime (forest plot)",
            },
        ),
        figure_svg="reports/regime/regime_forest.svg",
        findings="reports/regime/findings.md",
    log:
        f"{REGIME_ROOT}/logs/compare/regime.log",
    params:
        kind="regime",
        pairs=[f"{a}:{b}" for a, b in comparison_pairs("regime")],
        stem=subpath(output.table, strip_suffix=".md"),
        figure=subpath(output.figure, strip_suffix=".png"),
        extra=lambda w, output: " ".join(
            ["--findings", output.findings, *regime_backbone_args()]
        ),


rule regime:
    input:
        "reports/regime/regime.md",
        "reports/regime/regime.html",
        "reports/regime/regime_forest.png",
        "reports/regime/findings.md",


# A replicate study's comparison (`snakemake --cores N replicates` for the LeNet benchmarks,
# `resnet_replicates` for the ResNet-18 ones): each pair's difference per source seed and across
# seeds, in reports/<study>/.
use rule compare as compare_replicate_study with:
    input:
        runs=lambda w: replicate_runs(w.study),
    output:
        table="reports/{study}/replicates.md",
        csv="reports/{study}/replicates.csv",
        html=report(
            "reports/{study}/replicates.html",
            caption="../report/comparisons.rst",
            category="2. Paired comparisons",
            labels={
                "shows": "each pair's difference per source seed and across seeds",
                "table": "{study}",
            },
        ),
        tex="reports/{study}/replicates.tex",
        figure=report(
            "reports/{study}/replicates_forest.png",
            caption="../report/forest_pairs.rst",
            category="2. Paired comparisons",
            labels={
                "shows": "the replicate study's paired differences with 95% CI",
                "figure": "{study} (forest plot)",
            },
        ),
        figure_svg="reports/{study}/replicates_forest.svg",
        findings="reports/{study}/findings.md",
    log:
        f"{REGIME_ROOT}/logs/compare/{{study}}.log",
    wildcard_constraints:
        study="|".join(REPLICATE_STUDIES),
    params:
        kind="replicates",
        pairs=lambda w: [f"{a}:{b}" for a, b in comparison_pairs(w.study)],
        stem=subpath(output.table, strip_suffix=".md"),
        figure=subpath(output.figure, strip_suffix=".png"),
        extra=lambda w, output: " ".join(
            ["--findings", output.findings, *replicate_of_args(w.study)]
        ),


rule replicates:
    input:
        "reports/replicates/replicates.md",
        "reports/replicates/replicates.html",
        "reports/replicates/replicates_forest.png",
        "reports/replicates/findings.md",


rule resnet_replicates:
    input:
        "reports/resnet_replicates/replicates.md",
        "reports/resnet_replicates/replicates.html",
        "reports/resnet_replicates/replicates_forest.png",
        "reports/resnet_replicates/findings.md",


# The peers study: the results tables, forest plot and figures of the default run's aggregate,
# for every peer method, tuned and as written (`snakemake --cores N peers`).
use rule aggregate as aggregate_peers with:
    input:
        runs=peer_runs(),
        sources=expand("data/checkpoints/{source}/metrics.json", source=used_sources()),
        episodes=[
            home(f"episodes/{benchmark}/k{PARAMS.episodes.k[0]}.json")
            for benchmark in report_benchmarks()
        ],
        raw=lambda w: target_raw_dirs(),
    output:
        table="reports/peers/results.md",
        csv="reports/peers/results.csv",
        html=report(
            "reports/peers/results.html",
            caption="../report/results.rst",
            category="6. Peers",
            labels={
                "shows": "every peer method, tuned and as written, against its baseline",
                "table": "peers: test accuracy by method and k",
            },
        ),
        tex="reports/peers/results.tex",
        sources="reports/peers/sources.csv",
        forest=report(
            "reports/peers/forest.png",
            caption="../report/forest.rst",
            category="6. Peers",
            labels={
                "shows": "the peers' mean paired differences with 95% CI; filled: significant",
                "figure": "peers: paired differences (forest plot)",
            },
        ),
        forest_svg="reports/peers/forest.svg",
        figure="reports/peers/accuracy_vs_k.png",
        figure_svg="reports/peers/accuracy_vs_k.svg",
        episodes_figure="reports/peers/episode_differences.png",
        episodes_figure_svg="reports/peers/episode_differences.svg",
        metrics="reports/peers/metrics.json",
        by_cell="reports/peers/metrics_by_cell.json",
        plots=directory("reports/peers/plots"),
    log:
        f"{REGIME_ROOT}/logs/report/aggregate_peers.log",
    params:
        tables=subpath(output.table, parent=True),
        figures=subpath(output.figure, parent=True),
        baseline="full",
        tuned=lambda w: " ".join(tuned_block(PARAMS.peers.methods)),
        targets=lambda w: targets_json(),


rule peers:
    input:
        "reports/peers/results.md",
        "reports/peers/forest.png",
        "reports/peers/metrics.json",
        "reports/peers/metrics_by_cell.json",


# The studies of methods on benchmarks of their own (BENCHMARK_STUDIES): the default run's
# tables and figures in reports/<study>/: `snakemake --cores N resnet` (the ResNet-18 study, with
# its search report below) and `resnet_peers` (the peer methods on ResNet-18).
use rule aggregate as aggregate_study with:
    input:
        runs=lambda w: study_runs(w.study),
        sources=lambda w: study_sources(getattr(PARAMS, w.study).benchmarks),
        episodes=lambda w: study_episodes(w.study),
        raw=lambda w: target_raw_dirs(getattr(PARAMS, w.study).benchmarks),
    output:
        table="reports/{study}/results.md",
        csv="reports/{study}/results.csv",
        html=report(
            "reports/{study}/results.html",
            caption="../report/results.rst",
            category="7. ResNet-18",
            labels={
                "shows": "{study}: mean test accuracy with 95% CI, and paired differences to the baseline",
                "table": "{study}: test accuracy by method and k",
            },
        ),
        tex="reports/{study}/results.tex",
        sources="reports/{study}/sources.csv",
        forest=report(
            "reports/{study}/forest.png",
            caption="../report/forest.rst",
            category="7. ResNet-18",
            labels={
                "shows": "{study}: mean paired differences with 95% CI; filled: significant",
                "figure": "{study}: paired differences (forest plot)",
            },
        ),
        forest_svg="reports/{study}/forest.svg",
        figure="reports/{study}/accuracy_vs_k.png",
        figure_svg="reports/{study}/accuracy_vs_k.svg",
        episodes_figure="reports/{study}/episode_differences.png",
        episodes_figure_svg="reports/{study}/episode_differences.svg",
        metrics="reports/{study}/metrics.json",
        by_cell="reports/{study}/metrics_by_cell.json",
        plots=directory("reports/{study}/plots"),
    log:
        f"{REGIME_ROOT}/logs/report/aggregate_{{study}}.log",
    wildcard_constraints:
        study="|".join(BENCHMARK_STUDIES),
    params:
        tables=subpath(output.table, parent=True),
        figures=subpath(output.figure, parent=True),
        baseline="full",
        tuned=lambda w: " ".join(tuned_block(getattr(PARAMS, w.study).methods)),
        targets=lambda w: targets_json(getattr(PARAMS, w.study).benchmarks),


use rule search_report as search_report_resnet with:
    input:
        traces=search_targets(
            PARAMS.resnet.benchmarks,
            PARAMS.resnet.methods,
            PARAMS.shots(PARAMS.resnet),
        ),
    output:
        table="reports/resnet/search.md",
        csv="reports/resnet/search.csv",
        html="reports/resnet/search.html",
        tex="reports/resnet/search.tex",
        curves="reports/resnet/search_curves.png",
        curves_svg="reports/resnet/search_curves.svg",
        counts="reports/resnet/group_counts.png",
        counts_svg="reports/resnet/group_counts.svg",
    log:
        f"{REGIME_ROOT}/logs/report/search_report_resnet.log",
    params:
        labels=search_labels(
            search_targets(
                PARAMS.resnet.benchmarks,
                PARAMS.resnet.methods,
                PARAMS.shots(PARAMS.resnet),
            )
        ),
        tables=subpath(output.table, parent=True),
        figures=subpath(output.curves, parent=True),


rule resnet:
    input:
        "reports/resnet/results.md",
        "reports/resnet/forest.png",
        "reports/resnet/metrics_by_cell.json",
        "reports/resnet/search.md",
        expand(
            f"{REPORT_FIG}/groups/{{benchmark}}_filters.png",
            benchmark=PARAMS.resnet.benchmarks,
        ),


rule resnet_peers:
    input:
        "reports/resnet_peers/results.md",
        "reports/resnet_peers/forest.png",
        "reports/resnet_peers/metrics_by_cell.json",
