"""`python -m centerloss_ext.train.synthetic OUT_DIR [--identities 8]`: the command
keeps this name; the generated identity-folder tree is ``faces.synthetic``."""

from .faces.synthetic import main

if __name__ == "__main__":
    main()
