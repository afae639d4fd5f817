"""Write the image paths of a VOC split, one per line (input for `csra bench --images` and `csra tag -`).

    python benchmarks/voc_val_list.py ../shared/data/voc2007/VOCdevkit val > /tmp/voc_val.txt
"""
import sys

from csra_cli.data.datasets import read_voc

root, split = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "val"
print("\n".join(read_voc(root, split).paths))
