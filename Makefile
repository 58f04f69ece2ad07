# The quick start and the test command; see README.md.
#   make run     install what is missing, run the demo until Ctrl-C
#   make send    append one demo message (while `make run` runs); SUBJECT="..." to choose
#   make smoke   run the demo, send one message, wait for its event, stop (exit 0 = OK)
#   make test    the whole check (bash .ci/run)

VENV ?= .venv
export DEMO_VENV := $(VENV)

.PHONY: run send smoke test

run:
	bash demo/run.sh

send:
	$(VENV)/bin/python demo/send.py $(if $(SUBJECT),--subject '$(SUBJECT)')

smoke:
	DEMO_SMOKE=1 bash demo/run.sh

test:
	bash .ci/run
