"""The README names the paper it implements correctly (issue 12, defect 7)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_cites_the_paper_title_and_headline():
    text = re.sub(r"\s+", " ", open(os.path.join(ROOT, "README.md")).read()[:1500])
    assert ("SSBNet: Improving Visual Recognition Efficiency by Adaptive Sampling*, "
            "Kwan & Song, ECCV 2022") in text
    assert "SSB-ResNet-RS-200 reaches 82.6 % ImageNet top-1, 0.6 % above ResNet-RS-152" in text
