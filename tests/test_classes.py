import pytest

from research.data.classes import (
    CANONICAL_CLASSES,
    UnknownClassError,
    canonical_name,
    class_index,
    label_from_filename,
    map_folders,
)

SPANISH = {"alegria": "happiness", "disgusto": "disgust", "enojo": "anger", "miedo": "fear",
           "seriedad": "neutral", "sorpresa": "surprise", "tristeza": "sadness"}
ENGLISH = {"happy": "happiness", "disgust": "disgust", "angry": "anger", "fear": "fear",
           "neutral": "neutral", "surprise": "surprise", "sad": "sadness"}


@pytest.mark.parametrize("folder,expected", [*SPANISH.items(), *ENGLISH.items()])
def test_folder_names_map_to_canonical(folder, expected):
    assert canonical_name(folder) == expected


def test_spanish_and_english_give_same_indices():
    for es, en in zip(sorted(SPANISH, key=SPANISH.get), sorted(ENGLISH, key=ENGLISH.get), strict=True):
        assert class_index(es) == class_index(en)
    assert [class_index(n) for n in ("enojo", "disgusto", "miedo", "alegria", "seriedad", "tristeza", "sorpresa")] == list(range(7))


@pytest.mark.parametrize("name", ["Alegría", "ALEGRIA", " alegria ", "alegría"])
def test_case_and_accent_insensitive(name):
    assert canonical_name(name) == "happiness"


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownClassError, match="Known names: .*alegria.*happy"):
        canonical_name("contempt")


def test_two_folders_for_one_emotion_is_an_error():
    with pytest.raises(UnknownClassError, match="both mean 'happiness'"):
        map_folders(["happy", "alegria"])


@pytest.mark.parametrize("stem,label", [("anger_1", "anger"), ("alegria-3", "happiness"), ("IMG_0001", None), ("sad", "sadness")])
def test_label_from_filename(stem, label):
    assert label_from_filename(stem) == label


def test_seven_canonical_classes():
    assert CANONICAL_CLASSES == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
