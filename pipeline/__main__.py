"""`python -m pipeline`: the main job (see pipeline/run.py and conf/config.yaml)."""

from pipeline.run import main

if __name__ == "__main__":
    main()
