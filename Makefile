# Entry points. Both do all set-up first (scripts/setup.sh, idempotent).
.PHONY: demo train test setup clean

## make demo [ARGS="--steps 900"]: the whole pipeline locally on generated images (runs kept in var/demo)
demo:
	scripts/demo.sh $(ARGS)

## make train DIR=photos [ARGS="--steps 2000"]: train on your photos (DIR/<label>/<image>; runs kept in inception-work)
train:
	@test -n "$(DIR)" || { echo 'usage: make train DIR=folder-of-<label>/<image> [ARGS="--steps 2000"]'; exit 2; }
	scripts/demo.sh train $(DIR) $(ARGS)

## make test: every test of the workspace (what CI runs)
test:
	scripts/test.sh

setup:
	scripts/setup.sh

clean:
	rm -rf target var
