# kshot: k-shot fine-tuning with neuron grouping, as one DAG.
# Run `snakemake --cores N`; parameters live in params.yaml (see README.md).
from snakemake.utils import min_version

min_version("9.0")


from kshot.params import read_params_file

# Snakemake's own message for invalid YAML names no line: kshot's reader names the file, line, column
read_params_file("params.yaml")


configfile: "params.yaml"


# the landing page of `snakemake --report` (make report): what ran, what to read first
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/grouping.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/regime.smk"
include: "workflow/rules/studies.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# After `dvc pull`/`dvc checkout`, outputs that match dvc.lock are marked up to date (kshot/settle.py).
onsuccess:
    if not workflow.dryrun:
        write_stamp(stamped_outputs())


if settle_wanted():
    note = agree_with_dvc(stamped_outputs(), workflow.main_snakefile)
    if note:
        print(note, file=sys.stderr)


# One target per phase; dvc.yaml runs each phase as a DVC stage.
rule stage_data:
    input:
        data_targets(),


rule stage_pretrain:
    input:
        pretrain_targets(),


rule stage_activations:
    input:
        activation_targets(),


rule stage_finetune:
    input:
        finetune_targets(),
