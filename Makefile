# Two commands for a fresh clone:
#   make demo   installs the requirements, trains and evaluates on the embedded digits data
#   make test   installs the requirements and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo

.PHONY: install demo test clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# Digits 0-5 known, 6-9 unknown; a small backbone, a few epochs, on the CPU.
demo: install
	$(PY) main.py --enc_type mnist-conv --enc_out_dim 500 --latent_dim 32 --known_dataset digits \
	  --unknown_dataset digits_unknown --class_num 6 --data_transforms mnist --input_height 28 \
	  --batch_classes 6 --sample_count 16 --batch_size 512 --opt adam --lr 0.001 --kl_coeff 0.1 \
	  --generation_epoch 1 --margins_epoch 1 --margin_jump 1.0 --margin_max_distance 32 \
	  --lower_bound 0.05 --initial_sampling_std 0.14 --max_epochs 8 --accelerator cpu --num_workers 0 --offline \
	  --output_dir $(DEMO_DIR)/train
	$(PY) mnist_ae.py --known_dataset digits --class_num 6 --max_epochs 8 --accelerator cpu \
	  --num_workers 0 --output_dir $(DEMO_DIR)/ae
	$(PY) test.py --checkpoint_path $(DEMO_DIR)/train/checkpoints/last.ckpt \
	  --known_dataset digits --unknown_dataset digits_unknown --class_num 6 --data_transforms blob \
	  --batch_size 512 --ae_features --ae_checkpoint $(DEMO_DIR)/ae/last.ckpt --log_tsne --compare_untrained \
	  --accelerator cpu --num_workers 0 --offline --output_dir $(DEMO_DIR)/test

test: install
	$(PY) -m pytest -q

clean:
	rm -rf outputs .pytest_cache
