#!/bin/sh
# What a session with a GPU runs through the device tool, in one call (the machine has
# torch but not ray, mlflow or our database stack): the training core's tests, the CUDA
# ones included (--noconftest: tests/conftest.py needs the service's packages), then
# the throughput table. Results land in $OUT when the tool sets it.
#   sh bench/device_check.sh
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python -m pytest -q --noconftest -p no:cacheprovider tests/workers --continue-on-collection-errors 2>&1 | tail -15
python bench/train_throughput.py --device cuda --seconds 2 --repeats 2
if [ -n "$OUT" ]; then cp bench/results/train_throughput-cuda.json "$OUT/"; fi
