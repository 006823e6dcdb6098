#!/usr/bin/env bash
# SGPO on a CUDA GPU, in one command (each check under its own time limit), from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# Checks, each bounded by its own timeout, each printing one summary line "gpu_check <name>: PASS|FAIL|SKIP ...":
#   full-bf16   the user's command (accelerate launch examples/sgpo.py) on a model saved with save_pretrained and a
#               JSONL file: bf16 full fine-tuning on CUDA; the saved model reloads with finite weights
#   lora-bf16   the same with --use_peft; the saved adapter reloads onto the base model
#   vllm        the same with --use_vllm --vllm_mode colocate ("skipped: vllm not installed" when it is absent)
#   zero3       the same under DeepSpeed ZeRO-3 with the shipped config on one process (world size 1 still goes through
#               ZeRO-3's partitioning and gathering); the consolidated model reloads ("skipped" without deepspeed)
#   fsdp2       the same under FSDP2 with the shipped config on one process (CUDA only: accelerate starts FSDP only
#               on accelerators)
#   speed       python benchmarks/speed.py --device cuda --model-size tiny --quick (timing and peak memory of SGPO's steps vs online DPO)
# It exits non-zero if any check fails.
#
# Offline machines: packages missing there (trl, datasets, ...) are installed from the wheels in .whl/ (see
# docs/distributed.md for the download command). GPU_CHECK_DEVICE=cpu runs the same checks on CPU (float32, no bf16):
# that is how the script itself is tested on machines without a GPU. Logs go to $OUT/gpu_check/ when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
WORK="$(mktemp -d)"
LOGS="${OUT:-$WORK}/gpu_check"
mkdir -p "$LOGS"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 WANDB_DISABLED=true
export TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"
SUMMARY=()
FAILED=0

record() {  # record NAME STATUS DETAIL
    SUMMARY+=("gpu_check $1: $2 $3")
    echo "gpu_check $1: $2 $3"
    [ "$2" = "FAIL" ] && FAILED=1
    return 0
}

# ------------------------------------------------------------------ packages
if ! "$PYTHON" -c "import trl, datasets" >/dev/null 2>&1; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >"$LOGS/pip.log" 2>&1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
if ! "$PYTHON" -c "import trl_sgpo" >"$LOGS/import.log" 2>&1; then
    record setup FAIL "(cannot import trl_sgpo: $(tail -1 "$LOGS/import.log"))"
    printf '%s\n' "${SUMMARY[@]}"
    exit 1
fi
VERSIONS="$("$PYTHON" -c "
import torch, transformers, trl, datasets
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'
print(f'{gpu}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, '
      f'datasets {datasets.__version__}')
")"
echo "gpu_check device: $DEVICE ($VERSIONS), $(date -u +%Y-%m-%d)"

# --------------------------------------------------- the user's model and data
"$PYTHON" - "$WORK" <<'EOF' >"$LOGS/setup.log" 2>&1
import json, sys
from trl_sgpo.toy import build_char_tokenizer, build_tiny_model

work = sys.argv[1]
tokenizer = build_char_tokenizer()
model = build_tiny_model(tokenizer, hidden_size=256, num_layers=4, num_heads=4)  # ~3M parameters
model.save_pretrained(f"{work}/my-model")
tokenizer.save_pretrained(f"{work}/my-model")
words = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
with open(f"{work}/data.jsonl", "w") as handle:
    for i in range(64):
        a, b = words[i % 8], words[(i * 3 + 1) % 8]
        row = {"prompt": [{"role": "user", "content": f"swap {a} {b}"}],
               "completion": [{"role": "assistant", "content": f"{b} {a}"}]}
        handle.write(json.dumps(row) + "\n")
EOF
[ $? -eq 0 ] || { record setup FAIL "(see $LOGS/setup.log)"; printf '%s\n' "${SUMMARY[@]}"; exit 1; }

CPU_FLAGS=()
[ "$DEVICE" = "cpu" ] && CPU_FLAGS=(--use_cpu)
# Both phases in 4 steps (improver, DPO, improver, DPO), whatever the schedule defaults are.
COMMON=(--model_name_or_path "$WORK/my-model" --dataset_name "$WORK/data.jsonl" --max_steps 4
        --per_device_train_batch_size 8 --max_new_tokens 32 --logging_steps 1 --disable_tqdm true
        --improver_warmup_steps 0 --improver_steps 1 --dpo_steps 1 --report_to none "${CPU_FLAGS[@]}")

LAUNCH=()  # accelerate launch's own flags for the next `train` (an engine's config file)
# train NAME TIMEOUT_S EXTRA_FLAGS...: the user's command, then reload what it saved
train() {
    local name="$1" limit="$2"; shift 2
    local out="$WORK/$name" start end
    start=$(date +%s)
    timeout "$limit" "$PYTHON" -m accelerate.commands.launch "${LAUNCH[@]}" --num_processes 1 examples/sgpo.py \
        "${COMMON[@]}" --output_dir "$out" "$@" >"$LOGS/$name.log" 2>&1
    local status=$?
    end=$(date +%s)
    if [ $status -ne 0 ]; then
        record "$name" FAIL "(exit $status after $((end - start)) s; last line: $(tail -1 "$LOGS/$name.log"))"
        return
    fi
    local verdict
    verdict="$("$PYTHON" - "$out" "$WORK/my-model" "$DEVICE" "$name" <<'EOF' 2>>"$LOGS/$name.log"
import math, os, sys
import torch
from transformers import AutoModelForCausalLM

out, base, device, name = sys.argv[1:]
args = torch.load(os.path.join(out, "training_args.bin"), weights_only=False)
expected_bf16 = device == "cuda"
problems = []
plugin = getattr(args, "deepspeed_plugin", None)
engine = f"ZeRO-{plugin.zero_stage}" if plugin is not None else "no DeepSpeed"  # FSDP is not in the saved args
if name == "zero3" and engine != "ZeRO-3":
    problems.append(f"ran with {engine}")
if bool(args.bf16) != expected_bf16:
    problems.append(f"bf16={args.bf16}, expected {expected_bf16}")
if os.path.isfile(os.path.join(out, "adapter_config.json")):
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    kind = "LoRA adapter"
else:
    model = AutoModelForCausalLM.from_pretrained(out)
    kind = "full model"
if not all(torch.isfinite(p).all() for p in model.parameters()):
    problems.append("non-finite weights")
card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
if "## SGPO configuration" not in card:
    problems.append("no SGPO model card")
print(("PROBLEM " + "; ".join(problems)) if problems else f"{kind} and card reload, bf16={args.bf16}, {engine}")
EOF
)"
    local losses
    losses="$(grep -o "'loss': '[^']*'" "$LOGS/$name.log" | sed "s/'loss': //; s/'//g" | tr '\n' ' ')"
    if [[ -z "$verdict" || "$verdict" == PROBLEM* ]]; then
        record "$name" FAIL "(${verdict:-reload failed, see $LOGS/$name.log})"
    else
        record "$name" PASS "(4 steps in $((end - start)) s incl. start-up; losses: ${losses:-none logged}; $verdict)"
    fi
}

train full-bf16 100
train lora-bf16 100 --use_peft --learning_rate 1e-4

if "$PYTHON" -c "import vllm" >/dev/null 2>&1; then
    train vllm 150 --use_vllm --vllm_mode colocate --vllm_gpu_memory_utilization 0.3 --max_steps 2
else
    record vllm SKIP "(skipped: vllm not installed)"
fi

# ------------------------------------------------------- ZeRO-3 and FSDP2, one process
if "$PYTHON" -c "import deepspeed" >/dev/null 2>&1; then
    if [ "$DEVICE" = "cuda" ]; then
        LAUNCH=(--config_file examples/accelerate_configs/deepspeed_zero3.yaml)
    else  # DeepSpeed on a CPU: no bf16, and DeepSpeed's own CPU back end
        LAUNCH=(--use_deepspeed --deepspeed_config_file tests/deepspeed_configs/zero3.json --zero3_init_flag true)
        export DS_ACCELERATOR=cpu
    fi
    train zero3 120
    unset DS_ACCELERATOR
else
    record zero3 SKIP "(skipped: deepspeed not installed)"
fi
if [ "$DEVICE" = "cuda" ]; then
    LAUNCH=(--config_file examples/accelerate_configs/fsdp2.yaml)
    train fsdp2 120
else
    record fsdp2 SKIP "(skipped: accelerate starts FSDP only on accelerators)"
fi
LAUNCH=()

# ------------------------------------------------------------------ speed
start=$(date +%s)
timeout 200 "$PYTHON" benchmarks/speed.py --device "$DEVICE" --model-size tiny --quick --output-dir "$WORK/speed" \
    >"$LOGS/speed.log" 2>&1
status=$?
end=$(date +%s)
if [ $status -eq 0 ] && [ -f "$WORK/speed/speed_tiny.md" ]; then
    cp "$WORK/speed/speed_tiny.md" "$WORK/speed/speed_tiny.json" "$LOGS/" 2>/dev/null
    ratios="$(grep -E "^\| *(sgpo_dpo|sgpo_improver)" "$WORK/speed/speed_tiny.md" | head -2 | tr -s ' ' | tr '\n' ' ')"
    record speed PASS "($((end - start)) s; results in $LOGS/speed_tiny.md; ${ratios})"
else
    record speed FAIL "(exit $status after $((end - start)) s; last line: $(tail -1 "$LOGS/speed.log"))"
fi

echo "---- summary ($DEVICE: $VERSIONS)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
