"""`te doctor`: what is wrong with a data set, from the features te has cached, before its accuracy is trusted.

    >>> from transfer_engine.doctor import doctor                                  # doctest: +SKIP
    >>> d = doctor("feats/", dataset="photos", write_manifest="clean.csv")         # doctest: +SKIP
    >>> d.to_dict()["impact"]                                                      # doctest: +SKIP

Modules: rows (the records and one normalised feature row per distinct image), duplicates (the same bytes),
neighbours (k nearest by cosine: scikit-learn exact, FAISS above), near_duplicates (pairs above the
threshold, leaks across splits), label_issues (te's probe out of fold + cleanlab), outliers (and class
balance), impact (test accuracy with and without the leaked images), report (doctor.json, doctor.md),
sheets (contact sheets), manifest (the remedy), run (`doctor()`). The configuration is
`transfer_engine.core.configs.DoctorConfig`.
"""

from transfer_engine.core.configs import DoctorConfig
from transfer_engine.doctor.run import Diagnosis, doctor, rule_text, summary_lines

__all__ = ["Diagnosis", "DoctorConfig", "doctor", "rule_text", "summary_lines"]
