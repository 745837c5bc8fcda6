# Entry points. Both do all set-up first (scripts/setup.sh, idempotent).
.PHONY: demo test setup clean

## make demo [ARGS="--steps 900 --images DIR"]: run the whole pipeline locally
demo:
	scripts/demo.sh $(ARGS)

## make test: every test of the workspace (what CI runs)
test:
	scripts/test.sh

setup:
	scripts/setup.sh

clean:
	rm -rf target var
