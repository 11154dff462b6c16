"""The default calibration text of `itamae eval` (bilingual.txt, English and Japanese)."""
