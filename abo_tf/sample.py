"""Write a synthetic ABO download in the real layout: `python -m abo_tf.sample OUT_DIR`.

The generator itself lives in `abo_tf.testing.synthetic_abo`: it is test and demo support.
"""

import sys

from abo_tf.testing.synthetic_abo import main

if __name__ == "__main__":
    sys.exit(main())
